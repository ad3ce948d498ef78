//! The compiler (under construction).
