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
  restored without it, or a new one over an old folder): refused too, saying how to start anew.

Writes only :func:`claim_data_folder`, and only where neither has an identity.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from adapter.errors import ConfigurationError
from adapter.files import publish_once, remove_abandoned_candidates
from adapter.store.port import RecordStore

#: The file in the data folder holding its identity.
FOLDER_ID_FILE = "store.id"
#: key_fingerprints' row holding the identity of the database's data folder.
DATA_FOLDER_FINGERPRINT = "data-folder"


def _folder_id(data_dir: Path) -> str | None:
    try:
        return (data_dir / FOLDER_ID_FILE).read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{data_dir / FOLDER_ID_FILE} cannot be read ({type(exc).__name__})") from exc


def data_folder_problem(data_dir: Path, store: RecordStore) -> str | None:
    """Why ``data_dir`` is not the folder of ``store``'s images (module docstring), or None."""
    recorded = store.stored_fingerprints().get(DATA_FOLDER_FINGERPRINT)
    present = _folder_id(data_dir)
    if recorded == present:
        return None
    path = data_dir / FOLDER_ID_FILE
    if present is None:
        return (f"{data_dir} is not the data folder of this database's images ({path} is missing, which that folder "
                "holds): point ADAPTER_DATA_DIR at the folder every instance of this database shares; after a "
                "restore, restore the data folder taken with the database backup")
    if recorded is None:
        return (f"{data_dir} is the data folder of another database ({path} names one this database does not): point "
                "ADAPTER_DATABASE_URL at its database, or restore the database backed up with this folder; to start "
                f"this database anew with this folder's images, delete {path}")
    return (f"{data_dir} is the data folder of another database ({path} differs from the one this database "
            "names): point ADAPTER_DATA_DIR and ADAPTER_DATABASE_URL at a folder and a database that belong together")


def claim_data_folder(data_dir: Path, store: RecordStore) -> None:
    """Give a store without an identity one (module docstring), then check the pair.

    Raises:
        ConfigurationError: the folder is not the database's (:func:`data_folder_problem`).
    """
    if store.stored_fingerprints().get(DATA_FOLDER_FINGERPRINT) is None and _folder_id(data_dir) is None:
        identity = _create_folder_id(data_dir)  # another instance starting at once may have made it
        if store.stored_fingerprints().get(DATA_FOLDER_FINGERPRINT) is None:
            store.record_fingerprint(DATA_FOLDER_FINGERPRINT, identity)
    problem = data_folder_problem(data_dir, store)
    if problem is not None:
        raise ConfigurationError(problem)


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
