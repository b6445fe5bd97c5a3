"""The CLI's exit codes: one per kind of failure an operator or a script acts on
differently (docs/operations.md lists them with what to do)."""

from __future__ import annotations

import enum

from shardwise import errors


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    """Anything else (the message says what)."""
    USAGE = 2
    """A wrong command line (click's own code)."""
    NO_CLUSTER = 3
    """No cluster description where the command looked, or an invalid one."""
    NOT_RUNNING = 4
    """Nothing answers at the controller's addresses."""
    WRONG_SECRET = 5
    """The cluster refused the secret file's secret (or, with ``SHARDWISE_USER``, the
    user's password)."""
    IN_USE = 6
    """``shardwise up``: another one runs this cluster directory."""
    TIMEOUT = 7
    """The cluster did not answer in time, or a change's moves did not finish in time. A
    write that timed out may or may not have been applied."""
    NOT_FOUND = 8
    """``kv get``: the key is absent."""
    UNKNOWN_GROUP = 9
    """The change names a group the controller (or the description) does not know."""
    ORPHANED_SHARDS = 10
    """A leave would leave shards that hold data with no group: join another first."""
    REFUSED = 11
    """The cluster refused the request as invalid (an unknown shard or keyspace, a group
    that exists already, a key or value over the limits)."""
    SQL = 12
    """``shardwise sql``: a statement was refused or failed (syntax, an unknown table, a
    constraint, a limit, ...); the message starts with the kind of error."""
    BUSY = 13
    """The cluster turned the connection away for a reason it gave that is not the
    secret: too many connections, or shutting down. Retry shortly."""
    DENIED = 14
    """The logged-in user's roles do not allow the request (``shardwise user list``
    shows what each user may do)."""
    REPLICAS_DIFFER = 15
    """``shardwise check``: replicas of a group hold different data for a shard."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as shells report it)."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an error the CLI lets end a command."""
    table: list[tuple[type[BaseException], ExitCode]] = [
        (errors.ClusterNotFoundError, ExitCode.NO_CLUSTER),
        (errors.ClusterConfigError, ExitCode.NO_CLUSTER),
        (errors.ClusterNotRunningError, ExitCode.NOT_RUNNING),
        (errors.WrongSecretError, ExitCode.WRONG_SECRET),
        (errors.AuthenticationError, ExitCode.WRONG_SECRET),
        (errors.ServerBusyError, ExitCode.BUSY),
        (errors.PermissionDeniedError, ExitCode.DENIED),
        (errors.ClusterInUseError, ExitCode.IN_USE),
        (errors.ChangeTimeoutError, ExitCode.TIMEOUT),
        (errors.ClientTimeoutError, ExitCode.TIMEOUT),
        (errors.UnknownGroupError, ExitCode.UNKNOWN_GROUP),
        (errors.OrphanedShardsError, ExitCode.ORPHANED_SHARDS),
        (errors.ControllerError, ExitCode.REFUSED),
        (errors.RequestRefusedError, ExitCode.REFUSED),
        (errors.SqlError, ExitCode.SQL),
        (KeyboardInterrupt, ExitCode.INTERRUPTED),
    ]
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    return ExitCode.ERROR
