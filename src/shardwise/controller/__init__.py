"""The shard controller: replicated, numbered configurations of the cluster.

Which replica group owns which shard, which servers form each group, how each keyspace
maps keys to shards, and the SQL catalog. See ``model.py`` for the data,
``statemachine.py`` for the commands, ``rebalance.py`` for the assignment strategies.
"""

from shardwise.controller.model import (
    DEFAULT_KEYSPACE,
    NO_GROUP,
    AddColumn,
    Column,
    Configuration,
    CreateIndex,
    CreateKeyspace,
    CreateTable,
    DropTable,
    IndexDef,
    Join,
    Keyspace,
    Leave,
    Move,
    MoveInfo,
    Rebalance,
    Result,
    Scheme,
    ShardId,
    Table,
)
from shardwise.controller.schemes import ShardMap, shard_map
from shardwise.controller.statemachine import (
    ControllerStateMachine,
    decode_result,
    encode_command,
)

__all__ = [
    "DEFAULT_KEYSPACE",
    "NO_GROUP",
    "AddColumn",
    "Column",
    "Configuration",
    "ControllerStateMachine",
    "CreateIndex",
    "CreateKeyspace",
    "CreateTable",
    "DropTable",
    "IndexDef",
    "Join",
    "Keyspace",
    "Leave",
    "Move",
    "MoveInfo",
    "Rebalance",
    "Result",
    "Scheme",
    "ShardId",
    "ShardMap",
    "Table",
    "decode_result",
    "encode_command",
    "shard_map",
]
