public import SwitchyardModels

/// The priced outcome of one answered request.
public struct CostRecord: Sendable {
    public var requestID: String
    public var caller: Caller
    public var model: String
    public var usage: Usage
    public var cost: NanoUSD
    public var streamed: Bool
    /// What the provider's prompt cache saved (negative while a cache write is not read back).
    public var promptCacheSaved: NanoUSD
    /// Whether some of `usage` is estimated: a stream that ended (client gone, upstream cut) before the upstream
    /// reported its usage is priced from the request's size and the output relayed so far.
    public var usageEstimated: Bool
    /// What sending the request through the provider's batch API saved against its price sent alone.
    public var batchSaved: NanoUSD

    public init(requestID: String, caller: Caller, model: String, usage: Usage, cost: NanoUSD, streamed: Bool,
                promptCacheSaved: NanoUSD = .zero, usageEstimated: Bool = false, batchSaved: NanoUSD = .zero) {
        self.batchSaved = batchSaved
        self.usageEstimated = usageEstimated
        self.requestID = requestID
        self.caller = caller
        self.model = model
        self.usage = usage
        self.cost = cost
        self.streamed = streamed
        self.promptCacheSaved = promptCacheSaved
    }
}

/// Where priced requests go (metrics, ledger). Must not block: called on the request path.
public protocol CostRecorder: Sendable {
    func record(_ record: CostRecord)
}

/// Where cache outcomes go (metrics, the savings ledger). Must not block: called on the request path.
public protocol CacheRecorder: Sendable {
    /// What one cache did with one request; `saved` is what a hit saved at list prices (zero otherwise).
    func cache(_ kind: CacheKind, _ lookup: CacheLookup, model: String, saved: NanoUSD, caller: Caller?)
    /// A semantic candidate above the threshold refused by verification, and why.
    func semanticRejected(_ reason: String)
    /// A client reported a semantic hit as wrong (`POST /v1/cache/feedback`).
    func falseHitReported()
    /// A shadow check of a semantic hit: whether the model's fresh answer agreed with the cached one.
    func shadowChecked(agreed: Bool)
    /// A label reached the learned verifier's calibration: from a shadow check, a near miss, or feedback.
    func calibrationLabelled(source: CalibrationLabelSource)
    /// A shared-state store failed for `seam` ("exact_cache", …).
    func stateFailed(seam: String)
}

extension CacheRecorder {
    public func stateFailed(seam: String) {}
}

public enum CalibrationLabelSource: String, Sendable, CaseIterable {
    case shadow, nearMiss = "near_miss", feedback
}

extension CacheRecorder {
    public func calibrationLabelled(source: CalibrationLabelSource) {}
}
