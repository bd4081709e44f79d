//! CK_* constant names (generated; see tools/gen_names.py).
