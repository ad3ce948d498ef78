//! palisade-datapath (under construction).
