package bucket

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ErrEndpointRefused: the endpoint policy refused to connect to an address.
var ErrEndpointRefused = errors.New("refused by the operator's storage endpoint policy")

// DialPolicy is what the operator lets a Registry's storage URL make it
// connect to. A storage.url chooses the host (endpoint=, domain=, a
// connection string's BlobEndpoint, STORAGE_EMULATOR_HOST), and the operator
// connects from its own pod, which may reach what the Registry's namespace
// may not: the cloud metadata service above all.
type DialPolicy struct {
	// Allowed networks are always allowed, even the ones refused by default:
	// loopback, link-local (cloud metadata services: 169.254.169.254,
	// fd00:ec2::254), unspecified and multicast addresses.
	Allowed []netip.Prefix
}

// Control checks the address a connection is about to be made to, after DNS
// resolution, so a name that resolves to a refused address is refused too.
func (p DialPolicy) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrEndpointRefused, address, err)
	}
	ip := ap.Addr().Unmap()
	for _, n := range p.Allowed {
		if n.Contains(ip) {
			return nil
		}
	}
	if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsMulticast() ||
		ip.IsUnspecified() || ip.IsInterfaceLocalMulticast() || ip == awsMetadataIPv6 {
		return fmt.Errorf("%w: %s (allow it with --storage-allowed-networks)", ErrEndpointRefused, ip)
	}
	return nil
}

// awsMetadataIPv6 is AWS's metadata service over IPv6, outside link-local.
var awsMetadataIPv6 = netip.AddrFrom16([16]byte{0xfd, 0, 0x0e, 0xc2, 14: 0x02, 15: 0x54})
