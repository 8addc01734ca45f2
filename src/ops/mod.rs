//! What operators see: the HTTP endpoints ([`http`]) over a narrow view of
//! the runtime ([`view`]), and what `junction validate` says of the state
//! an edit of the definitions affects ([`edits`]). Nothing here reaches
//! into the stream thread.

pub mod edits;
pub mod http;
pub mod view;
