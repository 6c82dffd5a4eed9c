//! The request as the server understands it, independent of the wire format.
pub mod caps;
pub mod request;
pub mod seed;
pub mod size;
