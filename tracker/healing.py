"""Living through a Redis outage: wait with backoff, one log line when lost, one when back."""

import logging
import signal
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What an unreachable, restarting or stalled Redis raises (redis-py has already retried thrice).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# The first retry after half a second, doubling up to 5 s: a restarted Redis is noticed within
# seconds, and a long outage costs one refused connection every 5 s, not a busy loop.
FIRST_DELAY = 0.5
MAX_DELAY = 5.0

log = logging.getLogger(__name__)


class RedisLink:
    """One process's view of its Redis: tells the log once when it is lost and once when back."""

    def __init__(self, connection, who):
        self.connection = connection
        self.who = who
        self.lost_at = None
        kwargs = connection.connection_pool.connection_kwargs
        # Host, port and db only: the URL may carry a password.
        self.where = f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"

    def lost(self, error):
        """Note that Redis failed us; only the first failure of an outage is logged."""
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            log.warning(
                "%s: lost Redis at %s (%s); retrying every %g-%g s",
                self.who, self.where, error, FIRST_DELAY, MAX_DELAY,
            )  # fmt: skip

    def wait(self, wake_by=None):
        """Return once Redis answers PING, sleeping with backoff while it does not.

        `wake_by()`, if given, returns a UNIX time not to sleep past: a retry then notices a
        Redis that came back just before something is due.
        """
        delay = FIRST_DELAY
        while True:
            try:
                self.connection.ping()
                break
            except REDIS_DOWN as error:
                self.lost(error)
            pause = delay if wake_by is None else min(delay, max(wake_by() - time.time(), 0.05))
            time.sleep(pause)
            delay = min(delay * 2, MAX_DELAY)
        if self.lost_at is not None:
            log.info("%s: Redis is back after %.1f s", self.who, time.monotonic() - self.lost_at)
            self.lost_at = None


class DropRQConnectionErrors(logging.Filter):
    """Drop RQ's own 'could not connect to Redis' lines: a RedisLink reports the outage instead.

    RQ logs one per retry of its dequeue loop and one every 2 s from its pub/sub thread, so an
    outage of a minute would otherwise leave dozens of lines.
    """

    def filter(self, record):
        return "could not connect to Redis" not in str(record.msg)


def exit_on_signals():
    """Make SIGINT and SIGTERM end the process cleanly (exit code 0) wherever it is waiting."""

    def leave(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGTERM, leave)
