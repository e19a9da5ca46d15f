use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Palisade", description = "Security-first multi-tenant communications platform API."),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Sign-up, login and sessions of people"),
        (name = "me", description = "The calling principal"),
        (name = "api-keys", description = "API keys of the tenant"),
        (name = "users", description = "People of the tenant"),
        (name = "events", description = "The tenant's audit trail"),
        (name = "sysadmin", description = "Operator API, master key only"),
    ),
    components(schemas(palisade_core::Problem, palisade_core::FieldError))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A person's access token (JWT) or an API key (`ak_…`)."))
                    .build(),
            ),
        );
        c.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        c.add_security_scheme(
            "master_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The sysadmin master key (`mk_…`)."))
                    .build(),
            ),
        );
    }
}
