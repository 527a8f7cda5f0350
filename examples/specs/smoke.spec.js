// AppWright spec: smoke
const { test, expect } = require("appwright");

test("smoke", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
