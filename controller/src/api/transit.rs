//! The transit pool's services (`transit.proto`): `Transit` for the panel
//! and operators (request, read with the queue position, release, the
//! charges), `TransitPool` for operators (configuration classes). Fields
//! are parsed with `crate::ids` first; the domain is `crate::transit`.

use std::sync::Arc;

use navette_proto::gate::caller;
use navette_proto::v1;
use navette_proto::v1::transit_pool_server::TransitPool;
use navette_proto::v1::transit_server::Transit;
use tonic::Request;

use super::{Reply, reply};
use crate::error::{Error, Result};
use crate::ids::{self, AllocationId, ConfigurationClass, HostId, RequestId};
use crate::model::Time;
use crate::state::Controller;
use crate::store;
use crate::transit::{Allocation, AllocationState, Price, PricePeriod, allocate, billing};

pub struct TransitApi(pub Arc<Controller>);

fn timestamp(at: Option<Time>) -> Option<prost_types::Timestamp> {
    at.map(navette_proto::timestamp)
}

fn state(state: AllocationState) -> v1::transit_allocation::State {
    use v1::transit_allocation::State;
    match state {
        AllocationState::Waiting => State::Waiting,
        AllocationState::Active => State::Active,
        AllocationState::Wiping => State::Wiping,
        AllocationState::Released => State::Released,
        AllocationState::Cancelled => State::Cancelled,
    }
}

fn price(price: &Price) -> v1::Price {
    v1::Price {
        minor_units: price.minor_units,
        period: match price.period {
            PricePeriod::Month => v1::PricePeriod::Month,
            PricePeriod::Day => v1::PricePeriod::Day,
        }
        .into(),
        currency: price.currency.clone(),
    }
}

fn price_from(field: &str, price: Option<&v1::Price>) -> Result<Price> {
    let Some(price) = price else {
        return Err(Error::InvalidArgument(format!(
            "{field} is required: the server's own price, which transit costs after the free period"
        )));
    };
    let period = match v1::PricePeriod::try_from(price.period) {
        Ok(v1::PricePeriod::Month) => PricePeriod::Month,
        Ok(v1::PricePeriod::Day) => PricePeriod::Day,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{field}.period must be PRICE_PERIOD_MONTH or PRICE_PERIOD_DAY (got {})",
                price.period
            )));
        }
    };
    Ok(Price {
        minor_units: ids::price_minor_units(&format!("{field}.minor_units"), price.minor_units)?,
        period,
        currency: ids::currency(&format!("{field}.currency"), &price.currency)?.to_owned(),
    })
}

fn allocation(allocation: &Allocation) -> v1::TransitAllocation {
    v1::TransitAllocation {
        id: allocation.id.clone(),
        server_host_id: allocation.server_host_id.clone(),
        configuration_class: allocation.configuration_class.clone(),
        state: state(allocation.state).into(),
        transit_host_id: allocation.transit_host_id.clone().unwrap_or_default(),
        queue_position: allocation.queue_position.unwrap_or(0),
        price: Some(price(&allocation.price)),
        requested_at: timestamp(Some(allocation.requested_at)),
        started_at: timestamp(allocation.started_at),
        ended_at: timestamp(allocation.ended_at),
        free_until: timestamp(allocation.free_until()),
        wipe_error: allocation.wipe_error.clone(),
        requested_by: allocation.requested_by.clone(),
    }
}

/// The line item of `allocation` counted to `now`; `None` if it never
/// started (a request withdrawn from the queue costs nothing).
fn charge(allocation: &Allocation, now: Time) -> Option<v1::TransitCharge> {
    let (counted_to, charge) = allocation.charge(now)?;
    let free_days = allocation.free_seconds / billing::DAY_SECONDS;
    let description = format!(
        "transit host {} for {}: {} started day(s) beyond the {free_days} free day(s) at {} a {}: {}",
        allocation.transit_host_id.as_deref().unwrap_or(""),
        allocation.server_host_id,
        charge.billable_days,
        billing::amount_in_words(allocation.price.minor_units, &allocation.price.currency),
        allocation.price.period.as_str(),
        billing::amount_in_words(charge.amount_minor_units, &allocation.price.currency),
    );
    Some(v1::TransitCharge {
        allocation_id: allocation.id.clone(),
        transit_host_id: allocation.transit_host_id.clone().unwrap_or_default(),
        started_at: timestamp(allocation.started_at),
        ended_at: timestamp(allocation.ended_at),
        counted_to: timestamp(Some(counted_to)),
        free_seconds: allocation.free_seconds,
        billable_seconds: charge.billable_seconds,
        billable_days: charge.billable_days,
        price: Some(price(&allocation.price)),
        amount_minor_units: charge.amount_minor_units,
        r#final: allocation.ended_at.is_some(),
        description,
    })
}

#[tonic::async_trait]
impl Transit for TransitApi {
    async fn request_transit(
        &self,
        request: Request<v1::RequestTransitRequest>,
    ) -> Reply<v1::TransitAllocation> {
        let requested_by = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                if request.request_id.is_empty() {
                    return Err(Error::InvalidArgument(
                        "request_id is required: choose a unique id per request so that a retried call does not queue twice"
                            .to_owned(),
                    ));
                }
                let request_id = RequestId::parse("request_id", &request.request_id)?;
                let server = HostId::parse("server_host_id", &request.server_host_id)?;
                let price = price_from("price", request.price.as_ref())?;
                let allocated = allocate::request(
                    &self.0,
                    &allocate::TransitRequest {
                        request_id: &request_id,
                        server_host_id: &server,
                        price,
                        requested_by: &requested_by,
                    },
                )
                .await?;
                Ok(allocation(&allocated))
            }
            .await,
        )
    }

    async fn get_transit_allocation(
        &self,
        request: Request<v1::GetTransitAllocationRequest>,
    ) -> Reply<v1::TransitAllocation> {
        let request = request.into_inner();
        reply(
            async {
                let id = AllocationId::parse("id", &request.id)?;
                let client = self.0.db.get().await?;
                Ok(allocation(&store::transit::get(&**client, &id).await?))
            }
            .await,
        )
    }

    async fn list_transit_allocations(
        &self,
        request: Request<v1::ListTransitAllocationsRequest>,
    ) -> Reply<v1::ListTransitAllocationsResponse> {
        let request = request.into_inner();
        reply(
            async {
                let server =
                    ids::optional("server_host_id", &request.server_host_id, HostId::parse)?;
                let client = self.0.db.get().await?;
                let allocations = store::transit::list(&**client, server.as_deref()).await?;
                Ok(v1::ListTransitAllocationsResponse {
                    allocations: allocations.iter().map(allocation).collect(),
                })
            }
            .await,
        )
    }

    async fn release_transit(
        &self,
        request: Request<v1::ReleaseTransitRequest>,
    ) -> Reply<v1::TransitAllocation> {
        let request = request.into_inner();
        reply(
            async {
                let id = AllocationId::parse("id", &request.id)?;
                Ok(allocation(&allocate::release(&self.0, &id).await?))
            }
            .await,
        )
    }

    async fn list_transit_charges(
        &self,
        request: Request<v1::ListTransitChargesRequest>,
    ) -> Reply<v1::ListTransitChargesResponse> {
        let request = request.into_inner();
        reply(
            async {
                let server = HostId::parse("server_host_id", &request.server_host_id)?;
                let client = self.0.db.get().await?;
                let allocations = store::transit::list(&**client, Some(&server)).await?;
                let now = chrono::Utc::now();
                Ok(v1::ListTransitChargesResponse {
                    charges: allocations.iter().filter_map(|a| charge(a, now)).collect(),
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl TransitPool for TransitApi {
    async fn set_configuration_class(
        &self,
        request: Request<v1::SetConfigurationClassRequest>,
    ) -> Reply<v1::SetConfigurationClassResponse> {
        let actor = caller(&request)?.name.clone();
        let request = request.into_inner();
        reply(
            async {
                let host = HostId::parse("host_id", &request.host_id)?;
                let class =
                    ConfigurationClass::parse("configuration_class", &request.configuration_class)?;
                let served = allocate::set_configuration_class(&self.0, &host, &class).await?;
                tracing::info!(message = "configuration class set by an operator", host_id = %host, configuration_class = %class, %actor);
                Ok(v1::SetConfigurationClassResponse {
                    host_id: host.to_string(),
                    configuration_class: class.to_string(),
                    served_allocation_ids: served,
                })
            }
            .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_is_required_and_checked() {
        assert!(price_from("price", None).is_err());
        let good = v1::Price {
            minor_units: 2_999,
            period: v1::PricePeriod::Month.into(),
            currency: "EUR".to_owned(),
        };
        assert_eq!(
            price_from("price", Some(&good)).ok(),
            Some(Price {
                minor_units: 2_999,
                period: PricePeriod::Month,
                currency: "EUR".to_owned()
            })
        );
        for bad in [
            v1::Price {
                period: 0,
                ..good.clone()
            },
            v1::Price {
                currency: "eur".to_owned(),
                ..good.clone()
            },
            v1::Price {
                minor_units: ids::MAX_PRICE_MINOR_UNITS + 1,
                ..good.clone()
            },
        ] {
            let refused = price_from("price", Some(&bad));
            assert!(
                matches!(&refused, Err(Error::InvalidArgument(m)) if m.starts_with("price")),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_withdrawn_request_has_no_charge() {
        let at = chrono::Utc::now();
        let waiting = Allocation {
            id: "a01".to_owned(),
            server_host_id: "d1".to_owned(),
            configuration_class: "c8".to_owned(),
            state: AllocationState::Cancelled,
            transit_host_id: None,
            queue_position: None,
            price: Price {
                minor_units: 100,
                period: PricePeriod::Day,
                currency: "EUR".to_owned(),
            },
            requested_by: "panel".to_owned(),
            requested_at: at,
            started_at: None,
            ended_at: Some(at),
            free_seconds: 0,
            wipe_error: String::new(),
        };
        assert!(charge(&waiting, at).is_none());
        let started = Allocation {
            state: AllocationState::Released,
            transit_host_id: Some("t1".to_owned()),
            started_at: Some(at - chrono::Duration::days(9) - chrono::Duration::hours(5)),
            free_seconds: 7 * billing::DAY_SECONDS,
            ..waiting
        };
        let line = charge(&started, at).map(|c| (c.billable_days, c.amount_minor_units, c.r#final));
        assert_eq!(line, Some((3, 300, true)));
    }
}
