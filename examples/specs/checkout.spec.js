// AppWright spec: checkout
const { test, expect } = require("appwright");

test("checkout", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
