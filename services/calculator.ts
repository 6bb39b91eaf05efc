import { status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import {
  AddRequest,
  CalculatorServiceService,
  DivideRequest,
  MultiplyRequest,
  SubtractRequest,
  type CalculatorServiceServer,
} from "../proto/gen/leasehold/demo/v1/calculator.js";
import type { DemoService } from "./demo-service.js";

type Operands = { a: number; b: number };
type Answer = { result: number; instanceId: string };

/** Adapts an arithmetic function to a grpc-js unary handler that says which instance answered. */
function arithmetic(instanceId: string, operation: (a: number, b: number) => number) {
  return (call: ServerUnaryCall<Operands, Answer>, callback: sendUnaryData<Answer>): void => {
    callback(null, { result: operation(call.request.a, call.request.b), instanceId });
  };
}

/** The calculator demo service: Add, Subtract, Multiply, Divide on doubles. */
export const calculator: DemoService = {
  name: "calculator",
  definition: CalculatorServiceService,
  methods: {
    Add: { key: "add", request: AddRequest },
    Subtract: { key: "subtract", request: SubtractRequest },
    Multiply: { key: "multiply", request: MultiplyRequest },
    Divide: { key: "divide", request: DivideRequest },
  },
  implement: (instanceId): CalculatorServiceServer => ({
    add: arithmetic(instanceId, (a, b) => a + b),
    subtract: arithmetic(instanceId, (a, b) => a - b),
    multiply: arithmetic(instanceId, (a, b) => a * b),
    divide: (call, callback) => {
      if (call.request.b === 0) {
        callback({ code: status.INVALID_ARGUMENT, details: "division by zero: b must not be 0" });
        return;
      }
      callback(null, { result: call.request.a / call.request.b, instanceId });
    },
  }),
};
