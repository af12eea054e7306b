//! Integration tests of kiln-lora on a tiny fake model made of `LoraLinear`s.
#![allow(clippy::unwrap_used)]
mod fake;
mod files;
mod frozen;
mod init;
mod layer;
mod model;
mod train;
