//! Integration tests: the real gateway on 127.0.0.1:0 in front of an
//! in-process tenant (the sandbox, or a purpose-built one), over real sockets.

#[macro_use]
mod harness;

mod admin;
mod approvals;
mod audit;
mod bounded;
mod cli;

mod governed;
mod hostile;
mod identity;
mod landing;
mod observability;
mod passthrough;
mod policy;
mod promises;
mod replay;
mod sandbox;
mod scan;
mod soundness;
mod tls;
mod tricks;
mod ui;
mod upstream;
