// A spec that fails on purpose (the simulated agents fail every spec whose name
// contains "fail"): run it with examples/specs to see a failing suite, its JUnit
// <failure> and its ::error annotation.
const { test, expect } = require("appwright");

test("refunds an order", async ({ device }) => {
  await device.getById("tab-orders").tap();
  await device.getByText("Request refund").tap();
  await expect(device.getByText("Refund requested")).toBeVisible();
});
