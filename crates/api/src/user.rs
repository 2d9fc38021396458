//! `GET /v1/user`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CurrentUser {
    #[schema(example = "usr_2v8s9d2k1m")]
    pub id: String,
    pub email: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub mfa_enabled: bool,
    pub organizations: Vec<UserOrganization>,
    pub api_quotas: ApiQuotas,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserOrganization {
    pub id: String,
    pub name: String,
    /// `owner`, `admin`, `developer`, `viewer` or `billing`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiQuotas {
    /// Sustained API requests per minute for the calling token.
    pub requests_per_minute: u32,
    pub apps_limit: u32,
}
