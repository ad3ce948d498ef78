//! Manifest parsing and validation (under construction).
