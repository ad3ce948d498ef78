//! Restart.
