//! A finished OUT folder in a browser: `histomap view`. In: OUT (each slide folder's
//! `summary.json` and `predictions.csv`, and the slide files they name). Out: HTTP on
//! loopback serving the cohort report, the slides' files, and a zoomable viewer whose
//! image tiles are cut from the slide on demand, with the class map laid over them.
//!
//! | file | owns |
//! |---|---|
//! | `catalog.rs` | the finished slides in OUT and what the viewer needs of each: size, grid, classes, the map's bytes |
//! | `tiles.rs` | the **deep-zoom pyramid**: tile geometry, and cutting a tile from the slide or its overview |
//! | `cache.rs` | the byte-capped LRU that bounds the server's memory |
//! | `server.rs` | routes, static files confined to OUT, the worker threads |
//! | `assets/` | the viewer's page and script, compiled into the binary: nothing is fetched from a network |
//!
//! The server opens no file outside OUT but the slides that OUT's summaries name.

mod cache;
mod catalog;
mod server;
mod tiles;

pub use server::{Server, ServerOptions};
pub use tiles::TILE;
