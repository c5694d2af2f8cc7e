//! The MCP face of the registry: registers the eight tools (their logic is in
//! [`crate::tools`]) and the `health://check` resource with rmcp.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Implementation, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::Value;

use crate::tools::{
    self, Registry, ToolResult, delete_agent, get_agent, get_agent_facts, list_agents,
    register_agent, search_agents, update_agent,
};

pub const HEALTH_RESOURCE: &str = "health://check";

/// One per MCP session (rmcp builds one for each); all share the registry.
#[derive(Clone)]
pub struct RegistryServer {
    registry: Arc<Registry>,
    tool_router: ToolRouter<Self>,
}

impl RegistryServer {
    /// Runs one tool, timing it into the backend's `/metrics`.
    async fn timed(
        &self,
        tool: &str,
        run: impl std::future::Future<Output = ToolResult>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = std::time::Instant::now();
        let result = run.await;
        self.registry
            .metrics
            .observe(tool, result.is_ok(), started.elapsed());
        to_call_result(result)
    }
}

fn to_call_result(result: ToolResult) -> Result<CallToolResult, ErrorData> {
    Ok(match result {
        Ok(value) => CallToolResult::structured(value),
        Err(e) => {
            tracing::info!(error = %e, "tool error");
            CallToolResult::structured_error(e.to_json())
        }
    })
}

#[tool_router]
impl RegistryServer {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            tool_router: Self::tool_router(),
        }
    }

    /// Register a new agent in the NANDA registry and store its AgentFacts document.
    #[tool(
        name = "register_agent",
        annotations(
            title = "Register agent",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn register_agent(
        &self,
        Parameters(p): Parameters<register_agent::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("register_agent", register_agent::run(&self.registry, p))
            .await
    }

    /// List registered agents, optionally by status, a page at a time (pass next_cursor back as cursor).
    #[tool(
        name = "list_agents",
        annotations(
            title = "List agents",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_agents(
        &self,
        Parameters(p): Parameters<list_agents::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("list_agents", list_agents::run(&self.registry, p))
            .await
    }

    /// Search agents by capabilities (any of), domain, and a case-insensitive text query over id, url and description.
    #[tool(
        name = "search_agents",
        annotations(
            title = "Search agents",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn search_agents(
        &self,
        Parameters(p): Parameters<search_agents::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("search_agents", search_agents::run(&self.registry, p))
            .await
    }

    /// Get one agent's registration by its id.
    #[tool(
        name = "get_agent",
        annotations(
            title = "Get agent",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_agent(
        &self,
        Parameters(p): Parameters<get_agent::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("get_agent", get_agent::run(&self.registry, p))
            .await
    }

    /// Update an agent's URL, capabilities, domain, description or status.
    #[tool(
        name = "update_agent",
        annotations(
            title = "Update agent",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn update_agent(
        &self,
        Parameters(p): Parameters<update_agent::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("update_agent", update_agent::run(&self.registry, p))
            .await
    }

    /// Delete an agent and its AgentFacts from the registry.
    #[tool(
        name = "delete_agent",
        annotations(
            title = "Delete agent",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_agent(
        &self,
        Parameters(p): Parameters<delete_agent::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("delete_agent", delete_agent::run(&self.registry, p))
            .await
    }

    /// Get the AgentFacts document (skills, capabilities, certification) for an agent username.
    #[tool(
        name = "get_agent_facts",
        annotations(
            title = "Get agent facts",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_agent_facts(
        &self,
        Parameters(p): Parameters<get_agent_facts::Params>,
    ) -> Result<CallToolResult, ErrorData> {
        self.timed("get_agent_facts", get_agent_facts::run(&self.registry, p))
            .await
    }

    /// Check the health of the registry and its database.
    #[tool(
        name = "health_check",
        annotations(
            title = "Health check",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn health_check(&self) -> Result<CallToolResult, ErrorData> {
        let started = std::time::Instant::now();
        let report = tools::health_check::run(&self.registry).await;
        self.registry
            .metrics
            .observe("health_check", true, started.elapsed());
        Ok(CallToolResult::structured(report))
    }
}

fn health_line(report: &Value) -> String {
    format!(
        "Registry is {} (instance {}, store {}, database {})",
        report["status"].as_str().unwrap_or("unknown"),
        report["instance"].as_str().unwrap_or("?"),
        report["store"].as_str().unwrap_or("?"),
        report["database"].as_str().unwrap_or("?"),
    )
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RegistryServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "nanda-registry",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "The NANDA agent registry: register, find and describe A2A agents. \
             Use search_agents to find agents by capability, domain or text.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resource = Resource::new(HEALTH_RESOURCE, "health")
            .with_description("One-line health status of the registry");
        resource.mime_type = Some("text/plain".into());
        Ok(ListResourcesResult::with_all_items(vec![resource]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != HEALTH_RESOURCE {
            return Err(ErrorData::resource_not_found(
                format!("unknown resource {}", request.uri),
                None,
            ));
        }
        let report = tools::health_check::run(&self.registry).await;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(
            health_line(&report),
            HEALTH_RESOURCE,
        )])
        .into())
    }
}
