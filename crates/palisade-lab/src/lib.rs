//! palisade-lab (under construction).
