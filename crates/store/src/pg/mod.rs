//! placeholder
pub mod filter;
pub use filter::{PgParam, compile_filter};
