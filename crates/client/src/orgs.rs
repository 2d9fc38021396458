//! `client.orgs()`: organizations, their members and invitations
//! (`/v1/organizations`).

use reqwest::Method;
use shellwego_api::orgs::{
    Invitation, InvitationCreate, MemberList, Organization, OrganizationList,
};

use crate::{Answer, ApiError, Client, ListQuery};

/// The calls about organizations; see [`Client::orgs`].
pub struct Orgs<'a> {
    pub(crate) client: &'a Client,
}

impl Orgs<'_> {
    /// `GET /v1/organizations`: the caller's organizations.
    pub async fn list(&self, query: &ListQuery) -> Result<Answer<OrganizationList>, ApiError> {
        self.client
            .list("GET /v1/organizations", &["v1", "organizations"], query)
            .await
    }

    /// `GET /v1/organizations/{org_id}`: plan, quotas, usage and settings.
    pub async fn get(&self, id: &str) -> Result<Answer<Organization>, ApiError> {
        self.client
            .get(
                "GET /v1/organizations/{org_id}",
                &["v1", "organizations", id],
                &[],
            )
            .await
    }

    /// `GET /v1/organizations/{org_id}/members`.
    pub async fn members(
        &self,
        id: &str,
        query: &ListQuery,
    ) -> Result<Answer<MemberList>, ApiError> {
        self.client
            .list(
                "GET /v1/organizations/{org_id}/members",
                &["v1", "organizations", id, "members"],
                query,
            )
            .await
    }

    /// `POST /v1/organizations/{org_id}/invitations`: the answer carries
    /// the invitation token, shown this once.
    pub async fn invite(
        &self,
        id: &str,
        req: &InvitationCreate,
    ) -> Result<Answer<Invitation>, ApiError> {
        self.client
            .send_json(
                "POST /v1/organizations/{org_id}/invitations",
                Method::POST,
                &["v1", "organizations", id, "invitations"],
                req,
            )
            .await
    }
}
