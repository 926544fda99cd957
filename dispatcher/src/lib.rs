//! The dispatcher: one HTTP address for clients, forwarding to inference pods with
//! power-of-two-choices over peak-EWMA load, retries, passive ejection and admission control.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod balancer;
pub mod config;
pub mod connections;
pub mod discovery;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod server;
pub mod wire;
