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
        return try price(await next(request, context), context: context)
    }

    @inline(never)
    func price(_ response: GatewayResponse, context: GatewayContext) throws(GatewayError) -> GatewayResponse {
        let route = try context.requireRoute()
        let caller = try context.requireCaller()
        switch response {
        case .completion(var completion):
            let cost = route.price.cost(of: completion.usage)
            completion.cost = cost
            recorder.record(CostRecord(requestID: context.requestID, caller: caller, model: route.name,
                                       usage: completion.usage, cost: cost, streamed: false,
                                       promptCacheSaved: route.price.promptCacheSavings(of: completion.usage)))
            return .completion(completion)
        case .stream(let stream):
            let recorder = self.recorder
            let requestID = context.requestID
            stream.lifecycle.onTermination { _, usage in
                let usage = usage ?? Usage()
                recorder.record(CostRecord(requestID: requestID, caller: caller, model: route.name, usage: usage,
                                           cost: route.price.cost(of: usage), streamed: true,
                                           promptCacheSaved: route.price.promptCacheSavings(of: usage)))
            }
            return .stream(stream)
        }
    }
}
