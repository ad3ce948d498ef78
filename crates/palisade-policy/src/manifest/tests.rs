//! Tests of [`super::load`]: defaulting, validation and error attribution, table-driven.
