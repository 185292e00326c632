//! The operations behind the requests, one file per kind of request.

use super::*;

pub(super) mod admin;
pub(super) mod events;
pub(super) mod quote;
pub(super) mod tokens;
