//! The reference evaluator (under construction).
