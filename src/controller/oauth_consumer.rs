//! `BitbucketOAuthConsumer`: short-lived access tokens kept fresh in a Secret.
use std::sync::Arc;

use kube::runtime::controller::Action;

use super::{Context, Result};
use crate::api::BitbucketOAuthConsumer;

pub async fn reconcile(_obj: Arc<BitbucketOAuthConsumer>, _ctx: Arc<Context>) -> Result<Action> {
    Ok(Action::await_change())
}
