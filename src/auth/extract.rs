//! Authentication and authorization as extractors: a route lists the scope it needs, and a caller
//! without it is refused from the request head, before any body is read.

use super::{Caller, Callers, SCOPE_LINKS_READ, SCOPE_LINKS_WRITE, SCOPE_READ, SCOPE_WRITE};
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Callers: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let callers = <Callers as axum::extract::FromRef<S>>::from_ref(state);
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme name is case-insensitive (RFC 9110 section 11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let caller = callers.authenticate_bearer(token).await?;
        tracing::Span::current().record("caller", caller.name.as_str());
        crate::limits::rate::admit(parts, &caller.name)?;
        Ok(caller)
    }
}

/// A scope a route needs, as a type, so the route's extractor list states it.
pub trait NeedsScope {
    const SCOPE: &'static str;
}

macro_rules! scope_marker {
    ($name:ident, $scope:expr) => {
        pub struct $name;
        impl NeedsScope for $name {
            const SCOPE: &'static str = $scope;
        }
    };
}
scope_marker!(ProfileWrite, SCOPE_WRITE);
scope_marker!(ProfileRead, SCOPE_READ);
scope_marker!(LinksRead, SCOPE_LINKS_READ);
scope_marker!(LinksWrite, SCOPE_LINKS_WRITE);

/// An authenticated caller holding scope `N`. Extracted from the head alone and listed before
/// the body extractor, so a caller without the scope gets 403 before any body is read or judged.
pub struct Authorized<N: NeedsScope>(pub Caller, pub std::marker::PhantomData<N>);

impl<S, N> FromRequestParts<S> for Authorized<N>
where
    S: Send + Sync,
    Callers: axum::extract::FromRef<S>,
    N: NeedsScope,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(N::SCOPE)?;
        Ok(Self(caller, std::marker::PhantomData))
    }
}
