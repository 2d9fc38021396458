//! A container's network: see [`crate::hostnet`] (its own named network
//! namespace and a veth pair, the node's NAT, its published port, its
//! egress policy).

use crate::hostnet::HostNet;

use super::ContainerDriver;

pub(super) use crate::hostnet::NETNS_DIR;

impl ContainerDriver {
    /// The network helpers, with this driver's tools and owner.
    pub(super) fn hostnet(&self) -> HostNet {
        HostNet {
            ip: self.tools.ip.clone(),
            nft: self.tools.nft.clone(),
            owner: self.owner.clone(),
        }
    }
}
