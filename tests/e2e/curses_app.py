"""A small full-screen curses program that the end-to-end tests drive through Runlet.

It shows a menu of five items with a highlighted cursor (Up/Down move it), says "F2 pressed"
on F2, shows the terminal size as "size=ROWSxCOLS" and redraws it when the window changes
(SIGWINCH, which curses turns into KEY_RESIZE), and exits with status 7 on F10.

Only the standard library: the job runs it with whatever Python the node has.
"""

from __future__ import annotations

import contextlib
import curses
import sys

ITEMS = ("alpha", "bravo", "charlie", "delta", "echo")
EXIT_STATUS = 7


def draw(screen: curses.window, cursor: int, status: str) -> None:
    """Redraw the whole screen: title, menu with the cursor, size line and status line."""
    rows, cols = screen.getmaxyx()
    screen.erase()
    screen.addnstr(0, 0, "runlet menu", cols - 1)
    for index, name in enumerate(ITEMS):
        marker = ">" if index == cursor else " "
        attr = curses.A_REVERSE if index == cursor else curses.A_NORMAL
        screen.addnstr(2 + index, 0, f"{marker} item {index + 1} {name}", cols - 1, attr)
    screen.addnstr(2 + len(ITEMS) + 1, 0, f"size={rows}x{cols}", cols - 1)
    screen.addnstr(2 + len(ITEMS) + 2, 0, status, cols - 1)
    screen.refresh()


def main(screen: curses.window) -> int:
    """Run the menu until F10; returns the exit status."""
    with contextlib.suppress(curses.error):  # a terminal may not hide its cursor
        curses.curs_set(0)
    screen.keypad(True)
    cursor, status = 0, "ready"
    while True:
        draw(screen, cursor, status)
        key = screen.getch()
        if key == curses.KEY_UP:
            cursor = max(0, cursor - 1)
        elif key == curses.KEY_DOWN:
            cursor = min(len(ITEMS) - 1, cursor + 1)
        elif key == curses.KEY_F2:
            status = "F2 pressed"
        elif key == curses.KEY_RESIZE:
            curses.update_lines_cols()
        elif key == curses.KEY_F10:
            return EXIT_STATUS


if __name__ == "__main__":
    sys.exit(curses.wrapper(main))
