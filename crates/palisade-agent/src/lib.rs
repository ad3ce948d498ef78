//! palisade-agent (under construction).
