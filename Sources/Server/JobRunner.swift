import Foundation
import HTTPEdge
import Logging
import NIOCore
import NIOHTTP1
import Providers
import ServiceLifecycle
import Synchronization
import SwitchyardCore
import SwitchyardModels

/// The workers of one instance: take jobs from the store (P0 first), run each through the pipeline as its caller,
/// store the outcome once, and post it to the job's webhook. While a job runs its claim is renewed, so another
/// instance takes it over only if this one dies; a job cancelled meanwhile has its run cancelled. A refusal that
/// may pass (a rate limit, a spent budget, an upstream failure) is tried again after its `retry-after`, until the
/// job's deadline.
final class JobRunner: Service {
    let store: any JobStore
    let pipeline: Pipeline
    let chat: ChatHandler
    let settings: JobSettings
    let webhooks: WebhookSender?
    let logger: Logger
    let metrics: GatewayMetrics?
    let worker: String
    let clock: @Sendable () -> Int64
    fileprivate let running = Atomic<Int>(0)
    /// Set when a job was accepted here: the next look for work does not wait for the poll interval.
    private let nudged = Atomic<Bool>(false)

    init(store: any JobStore, pipeline: Pipeline, chat: ChatHandler, settings: JobSettings, webhooks: WebhookSender?, logger: Logger,
         metrics: GatewayMetrics? = nil, clock: @escaping @Sendable () -> Int64) {
        self.metrics = metrics
        self.store = store
        self.pipeline = pipeline
        self.chat = chat
        self.settings = settings
        self.webhooks = webhooks
        self.logger = logger
        self.clock = clock
        // Unique per process: a consumer name in the Redis group, and the owner of this instance's claims.
        worker = "gw-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
    }

    func nudge() { nudged.store(true, ordering: .relaxed) }

    var busy: Int { running.load(ordering: .relaxed) }

    func run() async throws {
        guard settings.workers > 0 else {
            // A service that returns ends the group: without workers, this one just waits for the end.
            try? await gracefulShutdown()
            return
        }
        // On shutdown no new job is taken; the running ones finish within the drain time (or are taken over).
        await cancelWhenGracefulShutdown { await self.dispatch() }
    }

    private func dispatch() async {
        await withTaskGroup(of: Void.self) { group in
            var idle = false
            // Idle, the store is asked less and less often (up to once a second): a job accepted here wakes the
            // workers at once, one accepted elsewhere is seen within that.
            var idleRounds = 0
            while !Task.isCancelled {
                if running.load(ordering: .relaxed) >= settings.workers || idle {
                    let longest = max(settings.pollInterval, .seconds(1))
                    let wait = idle ? min(settings.pollInterval * (1 << min(idleRounds, 10)), longest) : settings.pollInterval
                    idleRounds = idle ? idleRounds + 1 : 0
                    idle = false
                    await pause(wait)
                    continue
                }
                let claim: JobClaim?
                do {
                    claim = try await store.claim(worker: worker, now: clock())
                } catch {
                    logger.warning("job store unavailable", metadata: ["switchyard.reason": "\(error)"])
                    idle = true
                    continue
                }
                guard let claim else {
                    idle = true
                    continue
                }
                idleRounds = 0
                running.add(1, ordering: .relaxed)
                let slot = Slot(runner: self)
                group.addTask {
                    await self.execute(claim, slot: slot)
                    slot.release()
                }
            }
            group.cancelAll()
        }
    }

    /// Waits `duration`, or less when a job was accepted or finished meanwhile.
    private func pause(_ duration: Duration) async {
        let slice = Duration.milliseconds(10)
        var waited = Duration.zero
        while waited < duration, !Task.isCancelled {
            if nudged.exchange(false, ordering: .relaxed) { return }
            try? await Task.sleep(for: min(slice, duration - waited))
            waited += slice
        }
    }

    /// A worker's place, given back once: when its job ends, or earlier when the job's request joins a provider's
    /// batch (the wait is the batch's, bounded by `batch.max_pending`, not a worker's).
    final class Slot: Sendable {
        let runner: JobRunner
        private let released = Atomic<Bool>(false)

        init(runner: JobRunner) {
            self.runner = runner
        }

        func release() {
            guard !released.exchange(true, ordering: .relaxed) else { return }
            runner.running.subtract(1, ordering: .relaxed)
            runner.nudge()
        }
    }

    /// One job, start to end.
    func execute(_ claim: JobClaim, slot: Slot? = nil) async {
        let cancelled = Atomic<Bool>(false)
        let work = Task { await self.outcome(claim.job, slot: slot) }
        let renewal = Task {
            let period = max(settings.visibilityTimeout / 3, .milliseconds(10))
            while !Task.isCancelled {
                do { try await Task.sleep(for: period) } catch { return }
                // A failed renewal (the store is down) is tried again next period; the claim outlives two of them.
                if let held = try? await store.renew(claim, now: clock()), !held {
                    cancelled.store(true, ordering: .relaxed)
                    work.cancel()
                    return
                }
            }
        }
        let outcome = await withTaskCancellationHandler { await work.value } onCancel: { work.cancel() }
        renewal.cancel()
        guard !cancelled.load(ordering: .relaxed), !Task.isCancelled else { return }
        var stored: JobRecord?
        for attempt in 0..<3 {
            do {
                stored = try await store.finish(claim, outcome, now: clock())
                break
            } catch {
                // The store is down: tried again, then left to the claim's expiry (another instance runs it again).
                try? await Task.sleep(for: .milliseconds(200 << attempt))
            }
        }
        if let stored { metrics?.jobEnded(stored) }
        if let stored, let webhook = stored.webhook, let webhooks {
            await webhooks.deliver(JobsHandler.view(stored, position: nil), to: webhook, id: ("x-switchyard-job-id", stored.id))
        }
    }

    /// Runs the job's request (again after a passing refusal) until it answers, fails for good, or its deadline.
    func outcome(_ job: JobRecord, slot: Slot? = nil) async -> JobRecord.Outcome {
        func failed(_ error: GatewayError) -> JobRecord.Outcome {
            .failed(status: ErrorRenderer.status(for: error, format: job.format),
                    error: ErrorRenderer.body(for: error, format: job.format, requestID: job.id))
        }
        let expired = GatewayError(.queueTimeout, "the job did not finish before its deadline")
        var request: ChatRequest
        do {
            request = switch job.format {
            case .openAI: try OpenAIFormat.parseRequest(job.request)
            case .anthropic: try AnthropicFormat.parseRequest(job.request)
            }
        } catch {
            return failed(GatewayError(.invalidRequest, error.description))
        }
        // A job's answer is whole; the client's body is forwarded as is only when it asked for that already.
        let original = request.stream ? nil : ClientOriginal(request: request, body: ByteBuffer(bytes: job.request.serialized()))
        request.stream = false
        // P2 work may wait for a provider's batch API (where its model says `batch: auto`); one ticket for every
        // run, so a batch given up is not tried again.
        let ticket = job.priority == .p2
            ? BatchTicket(deadline: job.deadline, settings: settings.batch, joined: { slot?.release() }) : nil
        var backoff = Duration.milliseconds(500)
        while true {
            let left = job.deadline &- clock()
            guard left > 0 else { return failed(expired) }
            var context = GatewayContext(requestID: ChatHandler.makeRequestID(), logger: logger, clientFormat: job.format)
            context.caller = job.caller
            context.requestedPriority = job.priority
            context.runsAsJob = true
            context.batchTicket = ticket
            context.original = original
            do {
                let response = try await withDeadline(.nanoseconds(left)) { [pipeline, request, context] in
                    try await pipeline.run(request, context: context)
                }
                guard let response else { return failed(expired) }
                switch response {
                case .completion(let completion):
                    let rendered = try chat.renderCompletion(completion, chat: request, format: job.format, requestID: context.requestID)
                    guard case .buffer(let body) = rendered.body, let result = try? JSONValue.parse(body.readableBytesView) else {
                        return failed(GatewayError(.upstreamError, "the answer could not be stored", upstreamStatus: 502))
                    }
                    let model = completion.limits?.servedModel ?? completion.routing?.model.name ?? job.model
                    return .completed(result: result, cost: completion.cost ?? .zero, model: model)
                case .stream(let stream):
                    stream.lifecycle.end(.cancelled)
                    return failed(GatewayError(.internalError, "a job's request was answered with a stream"))
                }
            } catch let error as GatewayError where error.isRetryable {
                if Task.isCancelled { return failed(GatewayError(.internalError, "cancelled")) }
                let wait = error.retryAfter.map { max($0, .milliseconds(50)) } ?? backoff
                backoff = min(backoff * 2, .seconds(30))
                guard clock() &+ wait.nanoseconds < job.deadline else { return failed(error) }
                do { try await Task.sleep(for: wait) } catch { return failed(GatewayError(.internalError, "cancelled")) }
            } catch let error as GatewayError {
                return failed(error)
            } catch {
                return failed(GatewayError(.internalError, "internal error"))
            }
        }
    }
}

/// `body`'s value, or nil when `limit` passes first (then `body` is cancelled).
func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
}

/// Posts job outcomes to webhooks: JSON, signed (`x-switchyard-signature`, see `WebhookSignature`), retried with
/// exponential backoff and full jitter on a connection failure, a timeout, a 429 or a 5xx, at most
/// `settings.webhookAttempts` times. Not durable: an instance that dies while retrying drops the retries (the
/// outcome stays in the store, to poll).
struct WebhookSender: Sendable {
    let transports: UpstreamTransports
    let secret: [UInt8]
    let settings: JobSettings
    let logger: Logger
    let delivered: @Sendable (Bool) -> Void

    /// Posts `payload`, signed, retrying with backoff; `id` names what it is about (a header and its value).
    func deliver(_ payload: JSONValue, to url: String, id: (header: String, value: String)) async {
        guard let endpoint = UpstreamEndpoint(baseURL: url) else { return }
        let body = payload.serialized()
        var delay = settings.webhookBackoff
        for attempt in 1...settings.webhookAttempts {
            let timestamp = Int64(Date().timeIntervalSince1970)
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "user-agent", value: "switchyard-webhooks")
            headers.add(name: id.header, value: id.value)
            headers.add(name: "x-switchyard-delivery-attempt", value: String(attempt))
            headers.add(name: "x-switchyard-signature", value: WebhookSignature.header(secret: secret, timestamp: timestamp, body: body))
            let request = UpstreamRequest(endpoint: endpoint, method: .POST, target: endpoint.basePath.isEmpty ? "/" : endpoint.basePath,
                                          headers: headers, body: ByteBuffer(bytes: body), provider: "webhooks", maximumConnections: 16,
                                          connectTimeout: .nanoseconds(settings.webhookTimeout.nanoseconds), keepAlive: false)
            var retry = true
            do {
                let response = try await transports.execute(request, deadline: .now() + .nanoseconds(settings.webhookTimeout.nanoseconds),
                                                            streaming: false, maximumBodyBytes: 64 * 1024)
                if (200..<300).contains(response.status.code) {
                    delivered(true)
                    return
                }
                retry = response.status.code == 429 || response.status.code >= 500
                logger.notice("webhook refused", metadata: ["switchyard.webhook.id": "\(id.value)", "http.status": "\(response.status.code)"])
            } catch {
                logger.notice("webhook failed", metadata: ["switchyard.webhook.id": "\(id.value)", "switchyard.reason": "\(error)"])
            }
            guard retry, attempt < settings.webhookAttempts else { break }
            let jittered = Duration.nanoseconds(Int64.random(in: 0...max(delay.nanoseconds, 1)))
            do { try await Task.sleep(for: jittered) } catch { break }
            delay = min(delay * 2, .seconds(300))
        }
        delivered(false)
    }
}
