//! Which role may call which service of the controller. Applied to every
//! RPC on the mutual-TLS listener by `navette_proto::gate`.

use std::sync::Arc;

use navette_proto::gate::{Policy, is_public_infrastructure, service_of};
use navette_proto::identity::Role;

/// The surfaces, and who may use them.
fn allowed(service: &str) -> Option<(&'static str, &'static [&'static str])> {
    match service {
        "navette.v1.Catalogue" | "navette.v1.Accounts" | "navette.v1.Tests" => {
            Some(("panel API", &["panel", "operator"]))
        }
        "navette.v1.Hosts" | "navette.v1.HostPools" | "navette.v1.JoinTokens" => {
            Some(("operator API", &["operator"]))
        }
        "navette.v1.AgentGateway" => Some(("agent gateway", &["agent"])),
        _ => None,
    }
}

/// Decides whether `role` may call `path`.
pub fn decide(path: &str, role: &Role) -> Result<(), String> {
    let service = service_of(path);
    if is_public_infrastructure(service) {
        return Ok(());
    }
    match allowed(service) {
        Some((_, roles)) if roles.contains(&role.kind()) => Ok(()),
        Some((surface, roles)) => Err(format!(
            "{service} is part of the {surface}, open to {}; the caller is {role}",
            roles.join(" and ")
        )),
        None => Err(format!("{service} is not served to {role}")),
    }
}

pub fn controller_policy() -> Policy {
    Arc::new(decide)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str) -> Role {
        Role::Agent {
            host_id: host.to_owned(),
        }
    }

    #[test]
    fn each_surface_is_open_to_its_roles_only() {
        assert!(decide("/navette.v1.Catalogue/ListMigrations", &Role::Panel).is_ok());
        assert!(decide("/navette.v1.Catalogue/ListMigrations", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.Hosts/ListHosts", &Role::Operator).is_ok());
        assert!(decide("/navette.v1.AgentGateway/Heartbeat", &agent("a")).is_ok());

        let refused = decide("/navette.v1.Catalogue/ListMigrations", &agent("a"));
        assert_eq!(
            refused,
            Err("navette.v1.Catalogue is part of the panel API, open to panel and operator; the caller is agent of host a".to_owned())
        );
        assert!(decide("/navette.v1.Hosts/ListHosts", &Role::Panel).is_err());
        assert!(decide("/navette.v1.AgentGateway/Heartbeat", &Role::Operator).is_err());
        assert!(decide("/navette.v1.Agent/GetInventory", &Role::Operator).is_err());
    }

    #[test]
    fn health_and_reflection_are_open_to_every_role() {
        for role in [Role::Panel, Role::Operator, agent("a")] {
            assert!(decide("/grpc.health.v1.Health/Check", &role).is_ok());
            assert!(
                decide(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    &role
                )
                .is_ok()
            );
        }
    }
}
