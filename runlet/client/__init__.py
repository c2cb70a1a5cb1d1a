"""The client side: submitting, following and typing into jobs, queries, ping, logs.

It never imports the actor runtime or the actors: a client is a short-lived process on the loop."""
