//! Hawking's store and query layer.
