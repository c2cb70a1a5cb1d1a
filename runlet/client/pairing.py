"""`runlet pair`: the fleet key brought to a new device through the broker, with a short code.

Two sides, each on its own exclusive queue on the user's exchange (DESIGN.md §3):

    board (new, no key)                         holder (has the key)
    on pair.<plate>.board     ◀── PairRequested(attempt, node, spake) ──
                              ── PairAnswered(node, spake, proof) ───▶  pair.<plate>.holder.<a>
    checks the holder's proof ◀── PairConfirmed(proof, sealed key) ───  shows the board, asks y/N
    stores the key            ── PairEnded(ok, fingerprint) ─────────▶

The crypto is `runlet.protocol.pairing`'s; this module only moves its messages. The broker sees
node names, SPAKE2 messages (useless without the code), proofs and the sealed key: nothing it
could open or test guesses of the code against offline. The board counts failed attempts and
makes a new code after `MAX_FAILURES`; a code older than `CODE_LIFETIME` (by the board's
`clock`, which a test may pass) is replaced too, and an attempt on it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runlet.adapters.broker import Broker, BrokerSecurity, Incoming, QueueSpec
from runlet.config import Config
from runlet.errors import CryptoError, NoSuchTarget, PairingFailed, ProtocolError
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import PairAnswered, PairConfirmed, PairEnded, PairRequested
from runlet.protocol.pairing import (
    BOARD,
    CODE_LIFETIME,
    HOLDER,
    MAX_FAILURES,
    KeyExchange,
    PairingCode,
)

Say = Callable[[str], None]
Clock = Callable[[], float]
Confirm = Callable[[str, str], bool]  # (board's node name, check words) -> send the key?
ANSWER_SECONDS = 30.0  # how long the holder waits for each of the board's answers
TICK_SECONDS = 0.5  # how often the board looks at its code's age while nothing comes
MAX_PENDING = 8  # attempts begun and not confirmed that a board keeps


def _broker(config: Config, side: str) -> Broker:
    return Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-pair-{side}-{config.node}",
        security=BrokerSecurity.of(config.broker),
    )


async def _inbox(broker: Broker, spec: QueueSpec) -> asyncio.Queue[object]:
    """Consume `spec` into a queue of decoded messages; undecodable bodies are dropped."""
    inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=64)

    async def on_message(incoming: Incoming) -> None:
        await incoming.ack()
        try:
            message = wire.decode(incoming.body)
        except ProtocolError:
            return
        with contextlib.suppress(asyncio.QueueFull):  # a flood is dropped, not buffered
            inbox.put_nowait(message)

    await broker.consume(spec, on_message)
    return inbox


# -- the new device -----------------------------------------------------------------------


@dataclass
class Board:
    """The new device's side: holds a code, answers attempts, stores the key it is sent."""

    config: Config
    key_file: Path
    say: Say
    clock: Clock = time.monotonic
    lifetime: float = CODE_LIFETIME
    make_code: Callable[[], PairingCode] = PairingCode.generate
    on_code: Callable[[PairingCode], None] | None = None  # shows a new code (a QR code, say)
    code: PairingCode | None = None
    failures: int = 0
    born: float = 0.0
    pending: dict[str, KeyExchange] = field(default_factory=dict)

    async def run(self) -> FleetKey:
        """Print a code, wait until a device sends the fleet key with it; store the key."""
        if self.key_file.exists():
            raise PairingFailed(
                f"{self.key_file} exists: this device has a fleet key already; to give it to"
                " another device, run `runlet pair CODE` here with the code shown there"
            )
        broker = _broker(self.config, BOARD)
        await broker.connect()
        try:
            inbox = await self._new_code(broker, "pairing code")
            while True:
                try:
                    message = await asyncio.wait_for(inbox.get(), TICK_SECONDS)
                except TimeoutError:
                    if self._expired():
                        inbox = await self._replace(broker, "the code expired")
                    continue
                key = await self._handle(broker, message)
                if key is not None:
                    return key
                if self.failures >= MAX_FAILURES:
                    inbox = await self._replace(broker, f"{MAX_FAILURES} failed attempts")
        finally:
            await broker.close()

    def _expired(self) -> bool:
        return self.clock() - self.born >= self.lifetime

    async def _new_code(self, broker: Broker, why: str) -> asyncio.Queue[object]:
        self.code = self.make_code()
        self.failures = 0
        self.pending.clear()
        self.born = self.clock()
        spec = QueueSpec(
            addresses.pair_queue(self.config.user, self.code.nameplate, BOARD),
            "exclusive",
            (addresses.pair_board_key(self.code.nameplate),),
            dead_letter=False,
        )
        inbox = await _inbox(broker, spec)
        if self.on_code is not None:
            self.on_code(self.code)
        minutes = self.lifetime / 60
        self.say(f"{why}: {self.code}  (for {minutes:.0f} minutes)")
        self.say(f"on a device that has the fleet key: runlet pair {self.code}")
        return inbox

    async def _replace(self, broker: Broker, why: str) -> asyncio.Queue[object]:
        assert self.code is not None
        old = addresses.pair_queue(self.config.user, self.code.nameplate, BOARD)
        await broker.forget(old, delete=True)
        return await self._new_code(broker, f"{why}; new code")

    async def _handle(self, broker: Broker, message: object) -> FleetKey | None:
        assert self.code is not None
        match message:
            case PairRequested(attempt=attempt, node=node, spake=spake):
                if self._expired():
                    await self._end(broker, attempt, False, "the code expired")
                    return None
                exchange = KeyExchange(self.code, BOARD, user=self.config.user, attempt=attempt)
                try:
                    exchange.finish(spake)
                except CryptoError:
                    self.failures += 1
                    await self._end(broker, attempt, False, "malformed pairing message")
                    return None
                if len(self.pending) >= MAX_PENDING:
                    self.failures += 1  # begun and never confirmed: they count as guesses
                    self.pending.pop(next(iter(self.pending)))
                self.pending[attempt] = exchange
                self.say(f"{node} is pairing; check words {exchange.check_words()}")
                answer = PairAnswered(
                    attempt, self.config.node, exchange.outbound, exchange.proof()
                )
                await self._send(broker, attempt, answer)
            case PairConfirmed(attempt=attempt) if attempt in self.pending:
                return await self._confirmed(broker, self.pending.pop(attempt), message)
        return None

    async def _confirmed(
        self, broker: Broker, exchange: KeyExchange, confirmed: PairConfirmed
    ) -> FleetKey | None:
        attempt = confirmed.attempt
        if not exchange.verify(HOLDER, confirmed.proof):
            self.failures += 1
            self.say(f"a wrong code was tried ({self.failures} of {MAX_FAILURES})")
            await self._end(broker, attempt, False, "wrong code")
            return None
        if not confirmed.sealed:
            self.say("pairing declined on the other device")
            await self._end(broker, attempt, False, "declined")
            raise PairingFailed("the other device declined to send the fleet key")
        try:
            key = exchange.open(confirmed.sealed)
        except CryptoError as exc:
            self.failures += 1
            await self._end(broker, attempt, False, str(exc))
            return None
        key.save(self.key_file)
        await self._end(broker, attempt, True, "", key.fingerprint())
        self.say(f"paired: fleet key {key.fingerprint()} stored at {self.key_file}")
        return key

    async def _end(
        self, broker: Broker, attempt: str, ok: bool, reason: str, fingerprint: str = ""
    ) -> None:
        await self._send(broker, attempt, PairEnded(attempt, ok, reason, fingerprint))

    async def _send(self, broker: Broker, attempt: str, message: object) -> None:
        assert self.code is not None
        await broker.publish(
            addresses.pair_holder_key(self.code.nameplate, attempt),
            wire.encode(message),
            message_id=f"pair:{attempt}:{type(message).__name__}",
            durable=False,
            mandatory=False,  # the holder gave up: nobody to tell
        )


# -- the device that has the key ----------------------------------------------------------


async def send_key(
    config: Config, fleet_key: FleetKey, code_text: str, confirm: Confirm, say: Say
) -> str:
    """Give the fleet key to the device showing `code_text`; its node name once it stored it."""
    try:
        code = PairingCode.parse(code_text)
    except ValueError as exc:
        raise PairingFailed(str(exc)) from None
    attempt = uuid.uuid4().hex
    exchange = KeyExchange(code, HOLDER, user=config.user, attempt=attempt)
    broker = _broker(config, HOLDER)
    await broker.connect()
    try:
        spec = QueueSpec(
            addresses.pair_queue(config.user, code.nameplate, f"{HOLDER}.{attempt}"),
            "exclusive",
            (addresses.pair_holder_key(code.nameplate, attempt),),
            dead_letter=False,
        )
        inbox = await _inbox(broker, spec)
        await _request(broker, code, PairRequested(attempt, config.node, exchange.outbound))
        answer = await _next(inbox, attempt, PairAnswered)
        if not isinstance(answer, PairAnswered):
            reason = answer.reason if isinstance(answer, PairEnded) else "no answer"
            raise PairingFailed(f"the other device refused: {reason}")
        board = answer.node
        try:
            exchange.finish(answer.spake)
            proved = exchange.verify(BOARD, answer.proof)
        except CryptoError:
            proved = False
        if not proved:
            await _confirm(broker, code, PairConfirmed(attempt, exchange.proof()))
            raise PairingFailed(f"wrong code: {board} did not prove it knows {code_text!r}")
        if not confirm(board, exchange.check_words()):
            await _confirm(broker, code, PairConfirmed(attempt, exchange.proof()))
            raise PairingFailed("not sent: declined here")
        sealed = exchange.seal(fleet_key)
        await _confirm(broker, code, PairConfirmed(attempt, exchange.proof(), sealed))
        ended = await _next(inbox, attempt, PairEnded)
        if not (isinstance(ended, PairEnded) and ended.ok):
            reason = ended.reason if isinstance(ended, PairEnded) else "no answer"
            raise PairingFailed(f"{board} did not take the key: {reason}")
        say(f"paired {board}: it stored fleet key {ended.fingerprint}")
        return str(board)
    finally:
        await broker.close()


async def _request(broker: Broker, code: PairingCode, request: PairRequested) -> None:
    try:
        await broker.publish(
            addresses.pair_board_key(code.nameplate),
            wire.encode(request),
            message_id=f"pair:{request.attempt}:request",
            durable=True,  # the confirmed channel: only there does a returned message raise
            mandatory=True,  # no device waits with this nameplate: say so at once
        )
    except NoSuchTarget:
        raise PairingFailed(
            f"no device waits with code {code.nameplate}-…: check the code (it is good for"
            f" {CODE_LIFETIME / 60:.0f} minutes) and that the other device shows it"
        ) from None


async def _confirm(broker: Broker, code: PairingCode, confirmed: PairConfirmed) -> None:
    await broker.publish(
        addresses.pair_board_key(code.nameplate),
        wire.encode(confirmed),
        message_id=f"pair:{confirmed.attempt}:confirm",
        durable=False,
        mandatory=False,
    )


async def _next(inbox: asyncio.Queue[object], attempt: str, kind: type) -> object:
    """The board's next message of `kind` (or a PairEnded) for our attempt."""
    deadline = time.monotonic() + ANSWER_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(inbox.get(), left)
        except TimeoutError:
            break
        if isinstance(message, kind | PairEnded) and getattr(message, "attempt", "") == attempt:
            return message
    raise PairingFailed(f"the other device did not answer in {ANSWER_SECONDS:.0f} s")
