//! Images and archives (being written).
