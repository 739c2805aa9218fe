"""Background training: the SQLite job queue (`queue`), the local worker (`worker`) and their commands (`cli`)."""
