import NIOSSL
import SwitchyardCore

/// The TLS client contexts for HTTPS upstreams, one per set of trust roots (the system's, or a provider's
/// `tls_ca_file`), made on first use and kept: a context loads and parses its roots, which costs milliseconds.
///
/// Keyed by configuration only (never by anything a caller sends), so the map stays as small as the config.
final class UpstreamTLSContexts: Sendable {
    private let contexts = Locked([String: NIOSSLContext]())

    /// - Parameter caFile: A PEM file of trusted roots; `nil`: the system's.
    func context(caFile: String?) throws -> NIOSSLContext {
        let key = caFile ?? ""
        if let made = contexts.withLock({ $0[key] }) { return made }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile { configuration.trustRoots = .file(caFile) }
        // HTTP/1.1 only: each exchange holds its own connection (see `LoopLocalHTTPClient`).
        configuration.applicationProtocols = ["http/1.1"]
        let made = try NIOSSLContext(configuration: configuration)
        return contexts.withLock { map in
            if let raced = map[key] { return raced }
            map[key] = made
            return made
        }
    }

    /// Whether `host` is an IP address literal (no SNI then; the certificate is checked against the address).
    static func isIPAddress(_ host: String) -> Bool {
        host.contains(":") || (!host.isEmpty && host.allSatisfy { $0.isNumber || $0 == "." })
    }
}
