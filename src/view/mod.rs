//! A finished OUT folder in a browser: `histomap view`. In: OUT (each slide folder's
//! `summary.json` and `predictions.csv`, and the slide files they name). Out: HTTP on
//! loopback serving the cohort report, the slides' files, and a zoomable viewer whose
//! image tiles are cut from the slide on demand, with the class map laid over them.
//!
//! | file | owns |
//! |---|---|
//! | `catalog.rs` | the finished slides in OUT and what the viewer needs of each: size, grid, classes, the map's bytes |
//! | `tiles.rs` | the **Deep Zoom pyramid**: tile geometry as DZI numbers it, and cutting a tile from the slide or its overview |
//! | `maplayer.rs` | the class map as Deep Zoom layers: the most probable class, or one class's probability |
//! | `routes.rs` | what each path answers; files confined to OUT |
//! | `server.rs` | the HTTP server (hyper, tower-http): connection cap, timeouts, limits, graceful shutdown |
//! | `assets/` | the viewer's page and script, and OpenSeadragon's, compiled into the binary: nothing is fetched from a network |
//!
//! The server opens no file outside OUT but the slides that OUT's summaries name.

mod catalog;
mod maplayer;
mod routes;
mod server;
mod tiles;

pub use server::{Server, ServerOptions};
pub use tiles::TILE;
