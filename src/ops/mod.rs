//! What operators see: the HTTP endpoints ([`http`]) over a narrow view of
//! the runtime ([`view`]). Nothing here reaches into the stream thread.

pub mod http;
pub mod view;
