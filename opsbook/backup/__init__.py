"""opsbook's backups: take, list, verify, prune, restore, and the restore drill; one module a job.

    tools           the client tools (pg_dump, pg_restore, psql, redis-cli) and how they run
    manifest        what is on disk: names, manifest.json, listing, the latest, verification
    take            taking a backup (staged, then renamed into place)
    retention       which backups are past the retention, and pruning them
    restore         restoring a backup into production: rows, queue lists, data paths
    restore_drill   restoring into a scratch PostgreSQL and Redis, and what they hold

The names other code uses are exported here: `from opsbook.backup import take_backup`.
"""

from opsbook.backup.manifest import (
    BACKUP_PREFIX,
    DATA_PART,
    MANIFEST,
    NAME,
    BackupInfo,
    find_backup,
    latest_backup,
    list_backups,
    postgres_part,
    read_backup,
    redis_part,
    verify,
)
from opsbook.backup.restore import (
    StagedData,
    check_data_archive,
    discard_aside,
    discard_unpacked,
    queue_list_names,
    read_queue_lists,
    restore_postgres,
    restore_postgres_command,
    restore_queue_lists,
    restore_queue_lists_command,
    swap_in,
    unpack_data,
)
from opsbook.backup.restore_drill import DrillResult, drill, scratch_postgres, scratch_redis
from opsbook.backup.retention import past_retention, prune
from opsbook.backup.take import plan_backup, take_backup
from opsbook.backup.tools import BackupError

__all__ = [
    "BACKUP_PREFIX",
    "DATA_PART",
    "MANIFEST",
    "NAME",
    "BackupError",
    "BackupInfo",
    "DrillResult",
    "StagedData",
    "check_data_archive",
    "discard_aside",
    "discard_unpacked",
    "drill",
    "find_backup",
    "latest_backup",
    "list_backups",
    "past_retention",
    "plan_backup",
    "postgres_part",
    "prune",
    "queue_list_names",
    "read_backup",
    "read_queue_lists",
    "redis_part",
    "restore_postgres",
    "restore_postgres_command",
    "restore_queue_lists",
    "restore_queue_lists_command",
    "scratch_postgres",
    "scratch_redis",
    "swap_in",
    "take_backup",
    "unpack_data",
    "verify",
]
