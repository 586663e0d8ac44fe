"""Master patient index core: normalisation, comparison, Fellegi–Sunter scoring, blocking keys, EM training.

Pure functions over `hub.model.Patient`; no database and no I/O except reading the data files in
`mappings/mpi/` (placeholders, nicknames, the versioned model). Storage of blocking keys and the
pipeline's match step are built on top of this package.
"""
