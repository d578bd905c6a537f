public import SwitchyardCore
public import SwitchyardModels

/// Stage 6: prices every answer from the catalog (cached reads and writes at their own rates) and records it.
/// Streams are priced when they end, however they end, from the usage they reported.
public struct CostAccountingStage: GatewayStage {
    let recorder: any CostRecorder

    public init(recorder: any CostRecorder) {
        self.recorder = recorder
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        // Checked before the upstream call (a misordered pipeline must not spend money), read again after it: what
        // crosses the `await` stays out of the task's frame.
        _ = try context.requireRoute()
        _ = try context.requireCaller()
        return try price(await next(request, context), request: request, context: context)
    }

    @inline(never)
    func price(_ response: GatewayResponse, request: ChatRequest, context: GatewayContext) throws(GatewayError)
        -> GatewayResponse
    {
        let route = try context.requireRoute()
        let caller = try context.requireCaller()
        switch response {
        case .completion(var completion):
            let listed = route.price.cost(of: completion.usage)
            let cost = completion.batched ? route.price.batchCost(of: completion.usage) : listed
            completion.cost = cost
            let promptCacheSaved = route.price.promptCacheSavings(of: completion.usage)
            let batchSaved = NanoUSD(saturating: Int128(listed.value) - Int128(cost.value))
            recorder.record(CostRecord(requestID: context.requestID, caller: caller, model: route.name,
                                       usage: completion.usage, cost: cost, streamed: false,
                                       promptCacheSaved: promptCacheSaved, batchSaved: batchSaved))
            context.trail?.priced(.init(model: route.name, deployment: route.deploymentID, usage: completion.usage, cost: cost,
                                        promptCacheSaved: promptCacheSaved, batchSaved: batchSaved))
            return .completion(completion)
        case .stream(let stream):
            let recorder = self.recorder
            let requestID = context.requestID
            let trail = context.trail
            stream.lifecycle.onTermination { [weak lifecycle = stream.lifecycle] outcome, reported in
                let (usage, estimated) = Self.streamUsage(reported, outcome: outcome, request: request,
                                                          observedOutputTokens: lifecycle?.estimatedOutputTokens ?? 0)
                let cost = route.price.cost(of: usage), promptCacheSaved = route.price.promptCacheSavings(of: usage)
                recorder.record(CostRecord(requestID: requestID, caller: caller, model: route.name, usage: usage,
                                           cost: cost, streamed: true, promptCacheSaved: promptCacheSaved,
                                           usageEstimated: estimated))
                trail?.priced(.init(model: route.name, deployment: route.deploymentID, usage: usage, cost: cost,
                                    promptCacheSaved: promptCacheSaved, estimated: estimated))
            }
            return .stream(stream)
        }
    }

    /// What a stream is billed for. A stream that completed with a usage report is billed as reported. Otherwise
    /// (an OpenAI-style upstream reports usage only in its last chunk; an Anthropic one reports output only at its
    /// end) the provider still bills for what it processed and generated, so missing parts are estimated: input
    /// from the request's text at four bytes per token, output from the text relayed so far, never below what was
    /// reported.
    static func streamUsage(_ reported: Usage?, outcome: StreamOutcome, request: ChatRequest, observedOutputTokens: Int)
        -> (Usage, estimated: Bool)
    {
        if let reported, case .completed = outcome { return (reported, false) }
        var usage = reported ?? Usage()
        var estimated = false
        if usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens == 0 {
            usage.inputTokens = request.estimatedInputTokens
            estimated = usage.inputTokens > 0
        }
        if observedOutputTokens > usage.outputTokens {
            usage.outputTokens = observedOutputTokens
            estimated = true
        }
        return (usage, estimated)
    }

}
