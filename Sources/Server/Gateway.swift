import HTTPTypes
import Hummingbird
public import Logging
import MockProvider
import NIOCore
import Providers
import ServiceLifecycle
import Stages
import Embeddings
public import SwitchyardCore
import SwitchyardModels
import UnixSignals

/// An assembled gateway: its services (upstream HTTP client, in-process mock if configured, the HTTP server)
/// and the pieces tests look at.
public struct Gateway: Sendable {
    public let config: GatewayConfig
    public let metrics: GatewayMetrics
    /// The in-process mock provider, when a provider of kind `mock` is configured.
    public let mock: MockServer?
    /// The gateway's bound port, once it listens.
    public let listening: ReadySignal<Int>
    /// The in-process mock's base URL, once it listens.
    public let mockURL: ReadySignal<String>
    let services: [any Service]
    let logger: Logger

    /// Runs every service until SIGTERM/SIGINT (or cancellation). On a signal the server stops accepting
    /// connections, lets in-flight requests and streams finish within `config.drainTimeout`, then exits.
    public func run(handleSignals: Bool = true) async throws {
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: logger)
        configuration.maximumGracefulShutdownDuration = config.drainTimeout
        try await ServiceGroup(configuration: configuration).run()
    }
}

/// Builds the gateway described by `config`.
/// - Parameters:
///   - environment: Where provider API keys are read (`api_key_env`).
///   - embeddings: Whether `/v1/embeddings` is served from an on-device model.
public func buildGateway(config: GatewayConfig, logger: Logger, environment: [String: String],
                         embeddings: EmbeddingsSetting = .disabled) -> Gateway {
    let httpClient = HTTPClientService(providers: Array(config.providers.values))
    let metrics = GatewayMetrics(models: config.models.keys)
    let listening = ReadySignal<Int>()
    let mockURL = ReadySignal<String>()
    var services: [any Service] = [httpClient]

    var mock: MockServer?
    if config.providers.values.contains(where: { $0.kind == .mock }) {
        var trace: MockLengthTrace?
        if let path = config.mock.lengthTrace {
            do {
                trace = try MockLengthTrace(path: path)
            } catch {
                logger.error("mock length trace unusable; using the models' distributions", metadata: ["switchyard.reason": "\(error)"])
            }
        }
        let rates = Dictionary(uniqueKeysWithValues: config.mock.faultRates.compactMap { name, rate in
            MockFault(rawValue: name).map { ($0, rate) }
        })
        let server = MockServer(settings: MockSettings(
            latencyScale: config.mockLatencyScale, requireAPIKey: false,
            limits: MockLimits(requestsPerMinute: config.mock.requestsPerMinute, tokensPerMinute: config.mock.tokensPerMinute),
            faultRates: rates, seed: config.mock.seed, lengthTrace: trace))
        var mockLogger = logger
        mockLogger[metadataKey: "switchyard.component"] = "mock"
        mockLogger.logLevel = max(logger.logLevel, .notice)
        services.append(server.makeApplication(logger: mockLogger) { port in mockURL.set("http://127.0.0.1:\(port)") })
        mock = server
    }

    var providers: [String: any ProviderClient] = [:]
    for (name, provider) in config.providers {
        let mockBase: @Sendable () -> String = { mockURL.value ?? "http://127.0.0.1:0" }
        let baseURL = provider.kind == .mock ? mockBase : nil
        providers[name] = HTTPProvider(config: provider, transports: httpClient.transports, environment: environment, baseURL: baseURL)
    }
    let pipeline = DefaultPipeline.build(config: config, providers: providers, recorder: metrics)
    let draining = Locked(false)
    let hasMock = mock != nil
    let handler = ChatHandler(pipeline: pipeline, metrics: metrics, maxBodyBytes: config.maxBodyBytes, logger: logger)
    var batcher: EmbeddingBatcher?
    var unavailable = "the embeddings endpoint is disabled"
    switch embeddings {
    case .model(let directory):
        do {
            batcher = EmbeddingBatcher(encoder: try MiniLMEncoder(directory: directory))
        } catch {
            unavailable = error.description
            logger.warning("embeddings unavailable", metadata: ["switchyard.reason": "\(error.description)"])
        }
    case .unavailable(let reason):
        unavailable = reason
    case .disabled:
        break
    }
    let embeddingsHandler = EmbeddingsHandler(batcher: batcher, unavailableReason: unavailable, auth: AuthStage(keys: config.keys),
                                              maxBodyBytes: config.maxBodyBytes)

    let router = Router()
    router.post("/v1/chat/completions") { request, _ in await handler.handle(request, format: .openAI) }
    router.post("/v1/messages") { request, _ in await handler.handle(request, format: .anthropic) }
    router.post("/v1/embeddings") { request, _ in await embeddingsHandler.handle(request) }
    router.get("/v1/models") { _, _ in modelsResponse(config) }
    router.get("/healthz") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
    router.get("/readyz") { _, _ in
        let ready = !draining.withLock { $0 } && (!hasMock || mockURL.value != nil)
        return Response(status: ready ? .ok : .serviceUnavailable,
                        body: .init(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "not ready\n")))
    }
    router.get("/metrics") { _, _ in
        Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(bytes: metrics.render())))
    }

    var app = Application(
        responder: EdgeResponder(inner: router.buildResponder()),
        configuration: .init(address: .hostname(config.host, port: config.port), serverName: "switchyard", backlog: 4096),
        onServerRunning: { channel in listening.set(channel.localAddress?.port ?? 0) },
        logger: logger)
    if mock != nil {
        app.beforeServerStarts { _ = await mockURL.wait() }
    }
    services.append(app)
    // Last in the group, so first to hear of shutdown: /readyz turns 503 while the server drains.
    services.append(DrainWatcher(draining: draining))
    return Gateway(config: config, metrics: metrics, mock: mock, listening: listening, mockURL: mockURL, services: services,
                   logger: logger)
}

/// Flips the readiness flag when graceful shutdown begins.
struct DrainWatcher: Service {
    let draining: Locked<Bool>

    func run() async throws {
        try? await gracefulShutdown()
        draining.withLock { $0 = true }
    }
}

/// `GET /v1/models` in a shape both SDKs accept (OpenAI's list fields and Anthropic's).
func modelsResponse(_ config: GatewayConfig) -> Response {
    let names = config.models.keys.sorted()
    let data: [JSONValue] = names.map { name in
        [
            "id": .string(name), "object": "model", "type": "model", "created": 1_767_225_600,
            "created_at": "2026-01-01T00:00:00Z", "owned_by": .string(config.models[name]!.provider),
            "display_name": .string(name),
        ]
    }
    let body: JSONValue = [
        "object": "list", "data": .array(data), "has_more": false,
        "first_id": names.first.map { .string($0) } ?? .null, "last_id": names.last.map { .string($0) } ?? .null,
    ]
    return Response(status: .ok, headers: [.contentType: "application/json"],
                    body: .init(byteBuffer: ByteBuffer(bytes: body.serialized())))
}
