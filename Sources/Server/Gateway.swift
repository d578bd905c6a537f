import Admission
import HTTPEdge
import HTTPTypes
import Limits
public import Logging
import MockProvider
import NIOCore
import NIOHTTP1
import NIOPosix
import Providers
import ServiceLifecycle
import Stages
import Redis
import Routing
import Stores
import Embeddings
public import SwitchyardCore
public import Caching
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
    /// The exact response cache.
    public let exactCache: InMemoryExactCache
    /// The semantic response cache.
    public let semanticCache: InMemorySemanticCache
    /// The ledger's writer (nil with `ledger.enabled: false`): tests flush it.
    public let ledger: LedgerWriter?
    let services: [any Service]
    let logger: Logger
    let upstreamWaiters: @Sendable () -> [String: Int]

    /// Requests now waiting for a connection to each provider (plain-HTTP upstreams).
    public func poolWaiters() -> [String: Int] { upstreamWaiters() }

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

/// Builds the gateway described by `config`; throws when a provider's `tls_ca_file` cannot be loaded.
/// - Parameters:
///   - environment: Where provider API keys are read (`api_key_env`).
///   - embeddings: Whether `/v1/embeddings` is served from an on-device model.
public func buildGateway(config: GatewayConfig, logger: Logger, environment: [String: String],
                         embeddings: EmbeddingsSetting = .disabled) throws -> Gateway {
    // Shared state: the embedded default keeps it here; `state.backend: redis` shares it between instances.
    var redis: RedisClient?
    if config.state.backend == .redis {
        let state = config.state
        redis = RedisClient(configuration: RedisConfiguration(
            host: state.host, port: state.port, username: state.username, password: state.password, database: state.database,
            connectTimeout: .nanoseconds(state.connectTimeout.nanoseconds), commandTimeout: .nanoseconds(state.commandTimeout.nanoseconds),
            poolSize: state.poolSize, tls: state.tls ? RedisTLS(caFile: state.tlsCAFile) : nil, cluster: state.cluster), group: MultiThreadedEventLoopGroup.singleton)
        logger.info("shared state in redis", metadata: ["switchyard.redis": "\(state.tls ? "rediss" : "redis")://\(state.host):\(state.port)/\(state.database)\(state.cluster ? " (cluster)" : "")"])
    }
    let metrics = GatewayMetrics(models: Array(config.models.keys) + Array(config.routes.keys), providers: config.providers.keys,
                                 limits: config.limits.map(\.name),
                                 deployments: (Array(config.models.values) + config.deployments.values.joined()).map(AttemptsStage.deploymentID),
                                 budgeted: config.budgets.keys)
    let httpClient = HTTPClientService(providers: Array(config.providers.values), anomalies: metrics)
    // Each replica of a group is its own endpoint.
    try httpClient.prepareTLS(for: config.providers.values.flatMap { provider in
        provider.replicas.isEmpty ? [provider] : provider.replicas.map { url in
            var replica = provider
            replica.baseURL = url
            return replica
        }
    })
    let listening = ReadySignal<Int>()
    let mockURL = ReadySignal<String>()
    var services: [any Service] = [httpClient]
    // First in the group, so last to hear of shutdown: every service that writes to the shared state (the server's
    // requests, the ledger's last flush) has stopped before its connections close.
    if let redis { services.append(RedisService(client: redis)) }

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
        func faults(_ rates: [String: Double]) -> [MockFault: Double] {
            Dictionary(uniqueKeysWithValues: rates.compactMap { name, rate in MockFault(rawValue: name).map { ($0, rate) } })
        }
        var settings = MockSettings(
            latencyScale: config.mockLatencyScale, requireAPIKey: false,
            limits: MockLimits(requestsPerMinute: config.mock.requestsPerMinute, tokensPerMinute: config.mock.tokensPerMinute),
            faultRates: faults(config.mock.faultRates), seed: config.mock.seed, lengthTrace: trace,
            recordedAnswers: try config.mock.answers.map { directory throws(RoutingDataError) in try loadRecordedAnswers(directory: directory) })
        settings.schedule = config.mock.schedule.map {
            FaultWindow(start: $0.start, end: $0.end, model: $0.model, faultRates: faults($0.faultRates))
        }
        let server = MockServer(settings: settings)
        var mockLogger = logger
        mockLogger[metadataKey: "switchyard.component"] = "mock"
        mockLogger.logLevel = max(logger.logLevel, .notice)
        services.append(server.makeServer(logger: mockLogger) { port in mockURL.set("http://127.0.0.1:\(port)") })
        mock = server
    }

    var providers: [String: any ProviderClient] = [:]
    // A provider one of whose deployments has a budget: its answers' rate-limit headers correct the budget.
    let budgeted = Set((Array(config.models.values) + config.deployments.values.joined())
        .filter { config.budgets[$0.deploymentID] != nil }.map(\.provider))
    // Providers that may be sent P2 work through their batch API: those of a model or route with `batch: auto`.
    let batchModels = Set(config.models.values.filter { $0.batch == .auto }.map(\.name)
        + config.routes.values.filter { $0.batch == .auto }.flatMap { $0.rules.flatMap(\.target.models) })
    let batching = Set(batchModels.flatMap { model in
        ([config.models[model]].compactMap { $0 } + (config.deployments[model] ?? [])).map(\.provider)
    })
    for (name, var provider) in config.providers {
        provider.readsRateLimitHeaders = provider.readsRateLimitHeaders || budgeted.contains(name)
        let mockBase: @Sendable () -> String = { mockURL.value ?? "http://127.0.0.1:0" }
        let baseURL = provider.kind == .mock ? mockBase : nil
        if provider.replicas.count > 1 {
            let members = provider.replicas.map { url in
                var replica = provider
                replica.baseURL = url
                return HTTPProvider(config: replica, transports: httpClient.transports, environment: environment, anomalies: metrics)
            }
            let policy = BalancingPolicy(rawValue: provider.balancing) ?? .leastOutstandingTokens
            providers[name] = ReplicaGroup(members: members, settings: ReplicaBalancer.Settings(policy: policy, choices: provider.balancingChoices))
            continue
        }
        let client = HTTPProvider(config: provider, transports: httpClient.transports, environment: environment, baseURL: baseURL,
                                  anomalies: metrics)
        if batching.contains(name), provider.kind.hasBatchAPI {
            let collector = BatchCollector(upstream: client, settings: config.jobs.batch, clock: wallClockNanoseconds,
                                           observe: { [metrics] event in metrics.batch(event) })
            services.append(collector)
            providers[name] = BatchingProvider(inner: client, collector: collector)
        } else {
            providers[name] = client
        }
    }
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
    let exactCache = InMemoryExactCache(maxEntries: config.cache.maxEntries, maxBytes: config.cache.maxBytes)
    var exactStore: any ExactCacheStore = exactCache
    if let client = redis {
        exactStore = RedisExactCache(client: client, keyPrefix: config.state.keyPrefix,
                                     onWriteFailure: { [metrics] in metrics.stateFailed(seam: "exact_cache_write") })
    }
    let background = BackgroundWork()
    services.append(background)
    let semanticCache = InMemorySemanticCache(maxEntries: config.cache.semanticMaxEntries, maxBytes: config.cache.semanticMaxBytes,
                                              annThreshold: config.cache.semanticANNThreshold)
    // Shared: every instance searches its own index, kept in step through a Redis stream.
    var semanticStore: any SemanticCacheStore = semanticCache
    if let client = redis {
        let replicated = ReplicatedSemanticCache(local: semanticCache, client: client, keyPrefix: config.state.keyPrefix,
                                                 maximumLength: 2 * config.cache.semanticMaxEntries,
                                                 onFailure: { [metrics] in metrics.stateFailed(seam: "semantic_write") })
        semanticStore = replicated
        services.append(SemanticReplication(cache: replicated))
    }
    if config.cache.semanticEnabled && batcher == nil {
        logger.notice("semantic cache off: no embedding model", metadata: ["switchyard.reason": "\(unavailable)"])
    }
    var classifier: ComplexityClassifier?
    if config.usesComplexity {
        classifier = try config.classifierFile.map { path throws(ClassifierFileError) in try ComplexityClassifier.load(path: path) }
            ?? ComplexityClassifier.bundled()
        if batcher == nil {
            logger.warning("complexity routes send every request to their strongest model: no embedding model",
                           metadata: ["switchyard.reason": "\(unavailable)"])
        }
    }
    var learned: SemanticCacheStage.LearnedVerification?
    var sharedCalibration: SharedCalibration?
    if config.cache.semanticEnabled, config.cache.semanticLearnedVerifier, let batcher {
        let verifier = try config.cache.semanticVerifierFile.map { path throws(VerifierFileError) in try PairVerifier.load(path: path) }
            ?? PairVerifier.bundled()
        let settings = PairVerifier.calibrationSettings(base: verifier.threshold, targetPrecision: config.cache.semanticTargetPrecision)
        var calibration: SemanticCalibration?
        if config.cache.semanticCalibrate, let client = redis {
            // Shared: labels from every instance set the threshold every instance serves at.
            let failed: @Sendable () -> Void = { [metrics] in metrics.stateFailed(seam: "calibration_write") }
            let local = SemanticCalibration(settings: settings, shared: true,
                                            onServed: SharedCalibration.hitRecorder(client: client, keyPrefix: config.state.keyPrefix,
                                                                                    onWriteFailure: failed))
            let shared = SharedCalibration(calibration: local, client: client, keyPrefix: config.state.keyPrefix, onWriteFailure: failed)
            services.append(CalibrationSync(shared: shared))
            sharedCalibration = shared
            calibration = local
        } else if config.cache.semanticCalibrate {
            calibration = SemanticCalibration(settings: settings)
        }
        learned = SemanticCacheStage.LearnedVerification(verifier: verifier, words: EncoderWordVectors(encoder: batcher.encoder),
                                                         calibration: calibration)
    }
    // Limits: shared by every instance through Redis, or this process's.
    let limitStore: any LimitStore = redis.map { RedisLimitStore(client: $0, keyPrefix: config.state.keyPrefix,
                                                                     onSettleFailure: { [metrics] in metrics.stateFailed(seam: "limits_settle") }) } ?? LimitLedger()
    // Breakers: each instance's own, their openings shared through Redis when scaled out.
    let board: (any BreakerBoard)? = config.resilience.breaker == nil ? nil : redis.map { RedisBreakerBoard(client: $0, keyPrefix: config.state.keyPrefix) }
    // The admission queues: shared by every instance through Redis (one order for the shared budgets), or this
    // process's.
    let sharedAdmission = config.budgets.isEmpty || !config.admission.shared ? nil : redis.map {
        SharedAdmission(client: $0, keyPrefix: config.state.keyPrefix, observer: metrics, clock: AttemptsStage.monotonicNanoseconds)
    }
    if let sharedAdmission { services.append(AdmissionChannel(admission: sharedAdmission)) }
    let attempts = DefaultPipeline.attemptsStage(config, store: limitStore, recorder: metrics, board: board,
                                                 sharedGate: sharedAdmission.map { shared in { id, settings in shared.gate(id, settings: settings) } })
    if let attempts, board != nil { services.append(BreakerSync(attempts: attempts)) }
    // Jobs: durable in Redis when scaled out, this process's otherwise.
    let jobStore: any JobStore = redis.map { RedisJobStore(client: $0, keyPrefix: config.state.keyPrefix, settings: config.jobs) }
        ?? InMemoryJobStore(settings: config.jobs)
    let webhookSecret = environment["SWITCHYARD_WEBHOOK_SECRET"].flatMap { $0.isEmpty ? nil : Array($0.utf8) }
    let runnerBox = Locked<JobRunner?>(nil)
    let jobsHandler = JobsHandler(store: jobStore, auth: AuthStage(keys: config.keys), settings: config.jobs,
                                  names: Set(config.models.keys).union(config.routes.keys), webhookSecret: webhookSecret,
                                  maxBodyBytes: config.maxBodyBytes, logger: logger,
                                  accepted: { [metrics] job in
                                      metrics.jobAccepted(job.priority)
                                      runnerBox.withLock { $0 }?.nudge()
                                  }, clock: wallClockNanoseconds)
    // Budget alerts: claimed once across instances, logged, and posted (signed) to the configured webhook.
    var alerter: BudgetAlerter?
    if config.limits.contains(where: { !$0.alerts.isEmpty }) {
        let latch: any AlertLatch = redis.map { RedisAlertLatch(client: $0, keyPrefix: config.state.keyPrefix) } ?? InMemoryAlertLatch()
        let sender = webhookSecret.map { secret in
            WebhookSender(transports: httpClient.transports, secret: secret, settings: config.jobs, logger: logger,
                          delivered: { [metrics] ok in metrics.webhook(delivered: ok) })
        }
        if config.alertWebhook != nil && sender == nil {
            logger.warning("budget alerts are only logged: SWITCHYARD_WEBHOOK_SECRET is not set, so they cannot be signed")
        }
        let url = config.alertWebhook
        alerter = BudgetAlerter(latch: latch) { [metrics, logger] alert in
            metrics.budgetAlert(alert.limit)
            logger.notice("budget threshold reached", metadata: [
                "switchyard.limit": "\(alert.limit)", "switchyard.threshold_percent": "\(alert.threshold)",
                "switchyard.used": "\(alert.used)", "switchyard.amount": "\(alert.amount)",
                "switchyard.scope": "\(alert.scope.map { "\($0.0)=\($0.1)" }.joined(separator: ","))",
            ])
            if let url, let sender {
                await sender.deliver(alert.json, to: url, id: ("x-switchyard-alert-id", KeyHash.sha256Hex(alert.key, characters: 32)))
            }
        }
    }
    // The ledger: aggregates in the state store, raw records to the sink, written off the request path.
    var ledger: LedgerWriter?
    let live = LiveStats()
    let usageStore: any UsageStore = redis.map { RedisUsageStore(client: $0, keyPrefix: config.state.keyPrefix, retention: config.ledger.retention) }
        ?? UsageBook(retention: config.ledger.retention, maximumKeys: config.ledger.maximumKeys)
    if config.ledger.enabled {
        var sink: (any LedgerSink)?
        switch config.ledger.sink {
        case .none: break
        case .jsonl(let directory, let rotateBytes):
            sink = LedgerFileSink(directory: directory, rotateBytes: rotateBytes, retention: config.ledger.retention)
        case .postgres(let settings):
            let postgres = PostgresLedgerSink(settings: settings, password: settings.passwordEnv.flatMap { environment[$0] },
                                              retention: config.ledger.retention, logger: logger)
            // Before the writer in the group: its connections close after the writer's last flush.
            services.append(postgres)
            sink = postgres
        }
        let writer = LedgerWriter(usage: usageStore, sink: sink, live: live, capacity: config.ledger.buffer, interval: config.ledger.flushInterval,
                                  logger: logger, counted: { [metrics] written, dropped in metrics.ledger(written: written, dropped: dropped) },
                                  failed: { [metrics] seam in metrics.stateFailed(seam: seam) })
        services.append(writer)
        ledger = writer
    }
    let pipeline = DefaultPipeline.build(config: config, providers: providers, recorder: metrics, exactCache: exactStore,
                                         semanticCache: semanticStore, embedder: batcher.map { BatcherEmbedder(batcher: $0) },
                                         classifier: classifier, background: background, learned: learned, limits: limitStore,
                                         attempts: attempts, queue: { request, context in await jobsHandler.queueStep(request, context: context) },
                                         ledger: ledger, alerter: alerter)
    let draining = Locked(false)
    let hasMock = mock != nil
    let handler = ChatHandler(pipeline: pipeline, metrics: metrics, maxBodyBytes: config.maxBodyBytes, logger: logger,
                              watchQueues: !config.budgets.isEmpty && attempts != nil)
    let runner = JobRunner(store: jobStore, pipeline: pipeline, chat: handler, settings: config.jobs,
                           webhooks: webhookSecret.map { secret in
                               WebhookSender(transports: httpClient.transports, secret: secret, settings: config.jobs, logger: logger,
                                             delivered: { [metrics] ok in metrics.webhook(delivered: ok) })
                           },
                           logger: logger, metrics: metrics, clock: wallClockNanoseconds)
    runnerBox.withLock { $0 = runner }
    services.append(runner)
    let cacheAdmin = CacheAdminHandler(exact: exactStore, semantic: semanticStore, auth: AuthStage(keys: config.keys),
                                       adminKeyHash: environment["SWITCHYARD_ADMIN_KEY"].map(KeyHash.sha256Hex),
                                       recorder: metrics, calibration: learned?.calibration,
                                       sharedCalibration: sharedCalibration)
    let limitsHandler = LimitsHandler(planner: LimitPlanner(definitions: config.limits), store: limitStore, auth: AuthStage(keys: config.keys),
                                      adminKeyHash: environment["SWITCHYARD_ADMIN_KEY"].map(KeyHash.sha256Hex))
    let deploymentsHandler = DeploymentsHandler(config: config, attempts: attempts, store: limitStore,
                                                adminKeyHash: environment["SWITCHYARD_ADMIN_KEY"].map(KeyHash.sha256Hex))
    let usageHandler = UsageHandler(store: usageStore, auth: AuthStage(keys: config.keys),
                                    adminKeyHash: environment["SWITCHYARD_ADMIN_KEY"].map(KeyHash.sha256Hex),
                                    clock: unixSeconds, failed: { [metrics] in metrics.stateFailed(seam: "usage") })
    let dashboard = DashboardHandler(adminKeyHash: environment["SWITCHYARD_ADMIN_KEY"].map(KeyHash.sha256Hex), sessions: DashboardSessions(),
                                     usage: usageStore, live: config.ledger.enabled ? live : nil,
                                     queues: { attempts?.queueDepths() ?? [:] },
                                     breakers: { attempts?.breakerStates().mapValues(\.name) ?? [:] }, clock: unixSeconds)
    let embeddingsHandler = EmbeddingsHandler(batcher: batcher, unavailableReason: unavailable, auth: AuthStage(keys: config.keys),
                                              maxBodyBytes: config.maxBodyBytes)

    let healthy = ByteBuffer(string: "ok\n")
    let sharedState = redis
    let routes: EdgeResponder = { request in
        switch (request.method, request.path) {
        case (.POST, "/v1/chat/completions"): return await handler.handle(request, format: .openAI)
        case (.POST, "/v1/messages"): return await handler.handle(request, format: .anthropic)
        case (.POST, "/v1/embeddings"): return await embeddingsHandler.handle(request)
        case (.GET, "/v1/models"): return modelsResponse(config)
        case (.POST, "/v1/cache/feedback"): return await cacheAdmin.feedback(request)
        case (.DELETE, "/v1/cache"): return await cacheAdmin.clear(request)
        case (.GET, "/v1/usage/savings"): return await usageHandler.savings(request)
        case (.GET, "/v1/usage"): return await usageHandler.handle(request)
        case (.GET, "/v1/limits"): return await limitsHandler.report(request)
        case (.GET, "/v1/deployments"): return await deploymentsHandler.report(request)
        case (_, let path) where path == "/dashboard" || path.hasPrefix("/dashboard/"): return await dashboard.handle(request)
        case (_, let path) where path == JobsHandler.path || path.hasPrefix("\(JobsHandler.path)/"):
            return await jobsHandler.handle(request)
        case (.GET, "/healthz"): return EdgeResponse(status: .ok, body: .buffer(healthy))
        case (.GET, "/readyz"):
            var ready = !draining.withLock { $0 } && (!hasMock || mockURL.value != nil)
            var text = ready ? "ready\n" : "not ready\n"
            // The shared store, asked now (within its command timeout): down, it makes the instance unready only when
            // the caches fail closed (failing open, the instance still answers, from the model).
            if let sharedState {
                let reachable = (try? await sharedState.send(["PING"])) != nil
                if !reachable && config.state.caches == .failClosed { ready = false }
                text = (ready ? "ready\n" : "not ready\n") + "state: redis \(reachable ? "reachable" : "unreachable")\n"
            }
            return EdgeResponse(status: ready ? .ok : .serviceUnavailable, body: .buffer(ByteBuffer(string: text)))
        case (.GET, "/metrics"):
            return EdgeResponse(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                body: .buffer(ByteBuffer(bytes: metrics.render(poolWaiters: httpClient.transports.client.waiters(),
                                                                                queued: attempts?.queueDepths() ?? [:]))))
        default:
            return unrouted(request)
        }
    }
    let server = EdgeServer(
        configuration: .init(host: config.host, port: config.port, backlog: 4096, maxBodyBytes: config.maxBodyBytes,
                             timeouts: EdgeTimeouts(head: .nanoseconds(config.edge.headTimeout.nanoseconds),
                                                    idle: .nanoseconds(config.edge.idleTimeout.nanoseconds),
                                                    bodyMinimumBytesPerSecond: config.edge.bodyMinimumBytesPerSecond,
                                                    write: .nanoseconds(config.edge.writeTimeout.nanoseconds)),
                             maxConnections: descriptorBoundConnections(config.edge.maxConnections, logger: logger),
                             bodyBudgetBytes: config.edge.bodyBudgetBytes),
        logger: logger,
        beforeListening: { if hasMock { _ = await mockURL.wait() } },
        onListening: { port in listening.set(port) },
        responder: { request in
            var response = await routes(request)
            // `contains`: the subscript getter joins the field's values into a new string.
            if !response.headers.contains(.requestID) { response.headers[.requestID] = ChatHandler.makeRequestID() }
            return response
        })
    services.append(server)
    // Last in the group, so first to hear of shutdown: /readyz turns 503 while the server drains.
    services.append(DrainWatcher(draining: draining))
    return Gateway(config: config, metrics: metrics, mock: mock, listening: listening, mockURL: mockURL,
                   exactCache: exactCache, semanticCache: semanticCache, ledger: ledger, services: services, logger: logger,
                   upstreamWaiters: { [client = httpClient.transports.client] in client.waiters() })
}

/// The connections the edge keeps open at most: the configured number, but never so many that clients holding them
/// could take the process's last file descriptors. Past the bound a connection is answered 503 and closed, so
/// descriptors stay free for upstreams, stores and the runtime itself — whose thread-pool monitor (libdispatch's,
/// under Swift's default executor) reads `/proc` and traps when it cannot open a file.
func descriptorBoundConnections(_ configured: Int, logger: Logger) -> Int {
    var limit = rlimit()
    // RLIM_INFINITY is all ones.
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int.max) else { return configured }
    let descriptors = Int(clamping: limit.rlim_cur)
    // Half for a small limit (the gateway itself holds about 20 at rest), an eighth for a large one.
    let reserve = max(48, descriptors / 8)
    let bound = max(1, min(configured, descriptors - reserve))
    if bound < configured {
        logger.notice("connections bounded by the file descriptor limit",
                      metadata: ["switchyard.max_connections": "\(bound)", "switchyard.descriptor_limit": "\(descriptors)"])
    }
    return bound
}

/// Replays the shared semantic cache's stream into this instance's index until shutdown.
struct SemanticReplication: Service {
    let cache: ReplicatedSemanticCache

    func run() async throws {
        await cancelWhenGracefulShutdown { await cache.replicate() }
    }
}

/// Writes this instance's calibration labels to the shared store and reads everyone's back, until shutdown.
struct CalibrationSync: Service {
    let shared: SharedCalibration

    func run() async throws {
        await cancelWhenGracefulShutdown { await shared.run() }
    }
}

/// Opens this instance's breakers that other instances opened, reading the shared board every `interval`, until
/// shutdown.
struct BreakerSync: Service {
    let attempts: AttemptsStage
    static let interval = Duration.milliseconds(250)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.interval)
                await attempts.syncBreakers()
            }
        }
    }
}

/// Listens to the shared admission queues' moves until shutdown.
struct AdmissionChannel: Service {
    let admission: SharedAdmission

    func run() async throws {
        await cancelWhenGracefulShutdown { await admission.run() }
    }
}

/// Closes the shared-state connections at shutdown (after the server drained and the ledger flushed: it comes
/// before them in the group, and a group shuts down in reverse order).
struct RedisService: Service {
    let client: RedisClient

    func run() async throws {
        try? await gracefulShutdown()
        await client.close()
    }
}

/// Flips the readiness flag when graceful shutdown begins.
struct DrainWatcher: Service {
    let draining: Locked<Bool>

    func run() async throws {
        try? await gracefulShutdown()
        draining.withLock { $0 = true }
    }
}

/// Requests no route serves: 405 for a known path with the wrong method, 404 otherwise, in the envelope of the API
/// the path belongs to, never an empty body.
func unrouted(_ request: EdgeRequest) -> EdgeResponse {
    let known: Set<Substring> = ["/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models", "/healthz", "/readyz",
                                 "/metrics", "/v1/cache", "/v1/cache/feedback", "/v1/usage", "/v1/usage/savings", "/v1/limits",
                                 "/v1/deployments"]
    let format: APIFormat = request.path.hasPrefix("/v1/messages") ? .anthropic : .openAI
    let wrongMethod = known.contains(request.path)
    let error = GatewayError(wrongMethod ? .invalidRequest : .notFound, "no endpoint \(request.method.rawValue) \(request.path)")
    var response = ErrorRenderer.response(for: error, format: format, requestID: ChatHandler.makeRequestID())
    if wrongMethod { response.status = .methodNotAllowed }
    return response
}

/// `GET /v1/models` in a shape both SDKs accept (OpenAI's list fields and Anthropic's).
func modelsResponse(_ config: GatewayConfig) -> EdgeResponse {
    let names = (Array(config.models.keys) + Array(config.routes.keys)).sorted()
    let data: [JSONValue] = names.map { name in
        [
            "id": .string(name), "object": "model", "type": "model", "created": 1_767_225_600,
            "created_at": "2026-01-01T00:00:00Z", "owned_by": .string(config.models[name]?.provider ?? "switchyard-route"),
            "display_name": .string(name),
        ]
    }
    let body: JSONValue = [
        "object": "list", "data": .array(data), "has_more": false,
        "first_id": names.first.map { .string($0) } ?? .null, "last_id": names.last.map { .string($0) } ?? .null,
    ]
    return EdgeResponse(status: .ok, headers: [.contentType: "application/json"], body: .buffer(ByteBuffer(bytes: body.serialized())))
}

/// The mock's recorded answers from a routing data folder: for each GSM8K prompt, the weak model's answer for the
/// cheap tier and the strong model's for the expensive one.
public func loadRecordedAnswers(directory: String) throws(RoutingDataError) -> MockRecordedAnswers {
    var answers: [String: MockRecordedAnswers.Pair] = [:]
    for example in try RoutingData.load(directory: directory) {
        guard let weak = example.weakResponse, let strong = example.strongResponse else { continue }
        answers[example.prompt] = MockRecordedAnswers.Pair(cheap: weak, expensive: strong)
    }
    return MockRecordedAnswers(answers: answers)
}
