//! One module per subcommand.
pub mod bench;
pub mod classify;
pub mod convert;
pub mod download;
pub mod embed;
pub mod features;
pub mod index;
pub mod models;
pub mod search;
pub mod serve;
pub mod shards;
pub mod shards_text;
pub mod tokenize;
pub mod transfer;
