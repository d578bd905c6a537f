public import NIOCore
import NIOHTTP1
public import ServiceLifecycle
public import SwitchyardCore

/// The upstream HTTP client, owned as a `Service` so that it shuts down after the server drains.
public struct HTTPClientService: Service {
    public let transports: UpstreamTransports

    /// Each request carries its provider's `pool_size`, connect timeout and trust roots; the client's own defaults
    /// serve requests that carry none (the load harness).
    public init(providers: [ProviderConfig], anomalies: (any UpstreamAnomalyRecorder)? = nil) {
        let connect = providers.map(\.timeouts.connect).min() ?? .seconds(10)
        let poolSize = providers.map(\.poolSize).max() ?? ProviderConfig.defaultPoolSize
        transports = UpstreamTransports(
            client: LoopLocalHTTPClient(connectTimeout: .nanoseconds(connect.nanoseconds), connectionsPerHost: poolSize,
                                        anomalies: anomalies))
    }

    /// Loads every HTTPS provider's trust roots now, so that an unusable `tls_ca_file` stops the start.
    public func prepareTLS(for providers: [ProviderConfig]) throws {
        for provider in providers where provider.baseURL.hasPrefix("https://") {
            try transports.client.prepareTLS(caFile: provider.tlsCAFile)
        }
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await transports.shutdown()
    }
}

/// Sends upstream requests, plain HTTP and HTTPS alike.
public struct UpstreamTransports: Sendable {
    public let client: LoopLocalHTTPClient

    /// Closes the client's connections.
    public func shutdown() async {
        await client.shutdown()
    }

    /// See `LoopLocalHTTPClient.execute`.
    public func execute(_ request: UpstreamRequest, deadline: NIODeadline, headDeadline: NIODeadline? = nil,
                        queueDeadline: NIODeadline? = nil, idleTimeout: TimeAmount? = nil, streaming: Bool,
                        maximumBodyBytes: Int) async throws -> UpstreamResponse
    {
        try await client.execute(request, deadline: deadline, headDeadline: headDeadline, queueDeadline: queueDeadline,
                                 idleTimeout: idleTimeout, streaming: streaming, maximumBodyBytes: maximumBodyBytes)
    }
}
