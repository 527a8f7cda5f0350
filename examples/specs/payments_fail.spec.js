// AppWright spec: payments_fail
const { test, expect } = require("appwright");

test("payments_fail", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
