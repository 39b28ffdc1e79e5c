"""Which data folder a database's images are in: an identity kept in both, compared at start.

Why: the database holds the records, the data folder (ADAPTER_DATA_DIR) their images, and the
two only make a record store together. An instance started on the right database and another
folder (each container given a volume of its own, a restore of one without the other, a typo in
the path) started, said it was ready, and answered every image read 404, in silence; behind a
load balancer half of care's reads failed so (operations review). Now the first start on a new
store writes a random identity into both, the folder's ``store.id`` and the database's
key_fingerprints row ``data-folder``, and every later start (and ``verify``) compares them:

* both there and equal, or neither there (a new store, or one kept before this check: claimed
  now): no problem;
* the database names one and the folder has none: the folder is not the database's (``serve``
  refuses to start, exit 2, naming ADAPTER_DATA_DIR);
* the folder has one the database does not name (another database's folder, or a database
  restored without it, or a new one over an old folder): refused too. Never to be "fixed" by
  deleting ``store.id``: the folder's images are then no record's of this database, and
  ``verify --remove-unreferenced`` deleted every one of them (operations review 1). A new
  database takes a new, empty folder; a store moves to another database with its records
  (``python -m adapter copy-store``, which copies the ``data-folder`` row with them).

The claim is made under the lock every write of a fingerprint takes (RecordStore.claim_fingerprint),
the folder's file written before that transaction commits: an instance starting beside another on a
new shared store reads the folder only once the other's claim is committed, never its store.id
without the database's row (which it took for another database's folder: operations review 5).

Writes only :func:`claim_data_folder`, and only where neither has an identity.
:func:`removal_problems` says when the folder's unreferenced images are not this database's to remove.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from adapter.errors import ConfigurationError
from adapter.files import publish_once, remove_abandoned_candidates, unreadable_problem
from adapter.store.audit_chain import AUDIT_KEY_FILE
from adapter.store.engine import SQLITE_FILE, sqlite_path
from adapter.store.port import RecordStore

#: The file in the data folder holding its identity.
FOLDER_ID_FILE = "store.id"
#: The pseudonym key the adapter generates in the data folder when none is configured.
PSEUDONYM_KEY_FILE = "pseudonym.key"
#: What the adapter keeps directly in its data folder (StoreOptions: blobs, staging, quarantine),
#: the only entries checked before a command opens the store (adapter.files.folder_access_problem):
#: a data folder that is a volume of its own also holds a root-owned ``lost+found``, an NFS one a
#: ``.snapshot``, which the adapter never opens (review codereview finding 1).
DATA_FOLDER_ENTRIES = (SQLITE_FILE, f"{SQLITE_FILE}-wal", f"{SQLITE_FILE}-shm", f"{SQLITE_FILE}-journal",
                       AUDIT_KEY_FILE, FOLDER_ID_FILE, PSEUDONYM_KEY_FILE, "blobs", "staging", "quarantine")
#: key_fingerprints' row holding the identity of the database's data folder.
DATA_FOLDER_FINGERPRINT = "data-folder"


def _folder_id(data_dir: Path) -> str | None:
    try:
        return (data_dir / FOLDER_ID_FILE).read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(unreadable_problem(data_dir / FOLDER_ID_FILE, exc)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{data_dir / FOLDER_ID_FILE} cannot be read ({type(exc).__name__})") from exc


def data_folder_problem(data_dir: Path, store: RecordStore) -> str | None:
    """Why ``data_dir`` is not the folder of ``store``'s images (module docstring), or None."""
    recorded = store.stored_fingerprints().get(DATA_FOLDER_FINGERPRINT)
    present = _folder_id(data_dir)
    if recorded is None and present is not None:
        # another instance's claim may be under way (its store.id published, the database's row not
        # yet committed): read the row again under the lock its claim holds, writing nothing
        # (two instances started together on a new shared store: one was refused, ops review 2)
        recorded = store.claim_fingerprint(DATA_FOLDER_FINGERPRINT, lambda: None)
    if recorded == present:
        return None
    path = data_dir / FOLDER_ID_FILE
    if present is None:
        return (f"{data_dir} is not the data folder of this database's images ({path} is missing, which that folder "
                "holds): point ADAPTER_DATA_DIR at the folder every instance of this database shares; after a "
                "restore, restore the data folder taken with the database backup")
    if recorded is None:
        return (f"{data_dir} is the data folder of another database ({path} names one this database does not): point "
                "ADAPTER_DATABASE_URL at its database, or restore the database backed up with this folder; a new "
                "database needs a new, empty data folder (ADAPTER_DATA_DIR); to move that database's records to this "
                "one, with this folder, run python -m adapter copy-store --to <this database's URL> against that "
                "database (docs/operations.md: Moving the records to another database)")
    return (f"{data_dir} is the data folder of another database ({path} differs from the one this database "
            "names): point ADAPTER_DATA_DIR and ADAPTER_DATABASE_URL at a folder and a database that belong together")


def claim_data_folder(data_dir: Path, store: RecordStore) -> None:
    """Give a store without an identity one (module docstring), then check the pair.

    Raises:
        ConfigurationError: the folder is not the database's (:func:`data_folder_problem`).
    """
    def folder_identity() -> str | None:
        # the database names none, read under its lock: a folder with one is another database's
        return _create_folder_id(data_dir) if _folder_id(data_dir) is None else None

    store.claim_fingerprint(DATA_FOLDER_FINGERPRINT, folder_identity)
    problem = data_folder_problem(data_dir, store)
    if problem is not None:
        raise ConfigurationError(problem)


def removal_problems(data_dir: Path, database_url: str) -> list[str]:
    """Why the images in ``data_dir`` that no record of the database at ``database_url`` refers to
    must not be removed (``verify --remove-unreferenced``): they may be another store's. Empty
    when the folder is the database's alone.

    * no ``store.id``: no start of this database claimed the folder (the file deleted, as the
      refusal of another database's folder once advised; a folder of another database);
    * an ``adapter.db`` (a SQLite record store) in the folder while the configured database is
      another: its records refer to images here that this database's need not (a store moved to
      PostgreSQL, or a new database over its folder).
    """
    problems = []
    if _folder_id(data_dir) is None:
        problems.append(f"{data_dir / FOLDER_ID_FILE} is missing: no start of this database claimed {data_dir}, so "
                        "its images may be another database's; start serve on the database whose folder it is (it "
                        "claims it), or restore the store.id backed up with the database")
    sqlite = data_dir / SQLITE_FILE
    configured = sqlite_path(database_url)
    if sqlite.exists() and (configured is None or configured.resolve() != sqlite.resolve()):
        problems.append(f"{sqlite} is a SQLite record store in this data folder, and the configured database is "
                        "another: its records refer to images here that the configured database's may not; once its "
                        "records are copied (python -m adapter copy-store) and verified, move adapter.db (and "
                        "adapter.db-wal, adapter.db-shm) out of the data folder, or point ADAPTER_DATABASE_URL at it")
    return problems


def _create_folder_id(data_dir: Path) -> str:
    """The folder's identity: made now (adapter.files.publish_once: written whole and synced, then
    linked into place, so no reader sees it half written), or the one another instance sharing the
    folder made first."""
    path = data_dir / FOLDER_ID_FILE
    identity = secrets.token_hex(16)
    try:
        made = publish_once(path, f"{identity}\n")
        remove_abandoned_candidates(path)
    except OSError as exc:
        raise ConfigurationError(f"{path} cannot be written ({type(exc).__name__})") from exc
    return identity if made else (_folder_id(data_dir) or identity)
